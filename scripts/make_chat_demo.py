"""Write ``chat_demo.jsonl``: a few hundred short chat conversations (English
prose and Python code, some multi-turn, some with non-ASCII text) for the
offline demo and the ``tide preprocess`` tests.

Deterministic: the same script always writes the same file. A development script, run
from a source checkout (it is not part of the installed package; the file it made ships
as ``tide_plugin/data/chat_demo.jsonl``)::

    python scripts/make_chat_demo.py            # writes ./chat_demo.jsonl
    python scripts/make_chat_demo.py --out x.jsonl --count 50
    python scripts/make_chat_demo.py --out tide_plugin/data/chat_demo.jsonl --overwrite

It never writes into the package unless asked (``--out`` pointing there), and never
replaces an existing file without ``--overwrite``.

Each line is ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

SEED = 20240611
DEFAULT_COUNT = 320

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in a few sentences.",
    "You are a patient Python tutor. Explain your code clearly.",
    "You are a friendly assistant who writes clear, correct answers.",
    "You are an expert software engineer. Prefer simple, readable code.",
    "Answer the user's question accurately. If you are unsure, say so.",
    "You are a teaching assistant for an introductory programming course.",
    "Vous êtes un assistant serviable. Answer in English unless asked otherwise.",
]

# --- Python tasks: (name, what it does, code, explanation, complexity, test) ---
CODE = [
    (
        "is_palindrome",
        "checks whether a string is a palindrome, ignoring case and punctuation",
        '''def is_palindrome(text: str) -> bool:
    """Return True if text reads the same forwards and backwards.

    Only letters and digits are compared, and case is ignored.
    """
    cleaned = [ch.lower() for ch in text if ch.isalnum()]
    return cleaned == cleaned[::-1]''',
        "The function keeps only alphanumeric characters, lowercases them, and compares the list with its reverse. "
        "Slicing with `[::-1]` builds the reversed copy.",
        "It runs in O(n) time and uses O(n) extra memory for the cleaned copy.",
        'assert is_palindrome("A man, a plan, a canal: Panama")\nassert not is_palindrome("hello")',
    ),
    (
        "fibonacci",
        "returns the first n Fibonacci numbers",
        '''def fibonacci(n: int) -> list[int]:
    """Return a list with the first n Fibonacci numbers, starting 0, 1."""
    if n < 0:
        raise ValueError("n must be non-negative")
    numbers = []
    a, b = 0, 1
    for _ in range(n):
        numbers.append(a)
        a, b = b, a + b
    return numbers''',
        "Two variables hold the last two numbers of the sequence; each step appends the smaller one and shifts the pair forward. "
        "This avoids the exponential cost of the naive recursive version.",
        "The loop runs n times, so the time is O(n) and the result list takes O(n) memory.",
        "assert fibonacci(7) == [0, 1, 1, 2, 3, 5, 8]\nassert fibonacci(0) == []",
    ),
    (
        "word_count",
        "counts how often each word appears in a text",
        '''from collections import Counter


def word_count(text: str) -> dict[str, int]:
    """Count words in text, case-insensitively, ignoring surrounding punctuation."""
    words = (w.strip(".,;:!?\\"'()").lower() for w in text.split())
    return dict(Counter(w for w in words if w))''',
        "`str.split()` breaks the text on whitespace, `strip` removes punctuation at the edges of each word, and "
        "`collections.Counter` does the counting.",
        "Splitting and counting are both linear in the length of the text.",
        'assert word_count("The cat and the hat.") == {"the": 2, "cat": 1, "and": 1, "hat": 1}',
    ),
    (
        "flatten",
        "flattens an arbitrarily nested list",
        '''def flatten(items):
    """Yield the non-list elements of a nested list, depth first."""
    for item in items:
        if isinstance(item, list):
            yield from flatten(item)
        else:
            yield item''',
        "The generator walks the list; when it meets a sub-list it delegates to a recursive call with `yield from`, "
        "otherwise it yields the element itself.",
        "Every element is visited once, so the time is linear in the total number of elements; the recursion depth equals the nesting depth.",
        "assert list(flatten([1, [2, [3, 4]], 5])) == [1, 2, 3, 4, 5]",
    ),
    (
        "chunked",
        "splits a list into pieces of a fixed size",
        '''def chunked(items: list, size: int) -> list[list]:
    """Split items into consecutive lists of length size (the last may be shorter)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]''',
        "`range(0, len(items), size)` produces the start index of every piece, and slicing copies each piece. "
        "The last slice simply stops at the end of the list.",
        "It touches each element once: O(n) time and O(n) memory for the copies.",
        "assert chunked([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]",
    ),
    (
        "merge_sorted",
        "merges two sorted lists into one sorted list",
        '''def merge_sorted(left: list[int], right: list[int]) -> list[int]:
    """Merge two ascending lists into a new ascending list."""
    merged, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    merged.extend(left[i:])
    merged.extend(right[j:])
    return merged''',
        "Two indices walk the lists in step, always taking the smaller head. When one list runs out, the rest of the other "
        "is already sorted and is appended in one go. Using `<=` keeps the merge stable.",
        "Each element is copied once, so merging lists of lengths m and n costs O(m + n).",
        "assert merge_sorted([1, 4, 9], [2, 3, 10]) == [1, 2, 3, 4, 9, 10]",
    ),
    (
        "binary_search",
        "finds the index of a value in a sorted list with binary search",
        '''def binary_search(items: list[int], target: int) -> int:
    """Return the index of target in the sorted list items, or -1 if it is absent."""
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1''',
        "The search keeps a window `[lo, hi]` that must contain the target if it is present, and halves the window at every step "
        "by comparing with the middle element.",
        "Because the window halves each time, the search takes O(log n) comparisons.",
        "assert binary_search([1, 3, 5, 7, 9], 7) == 3\nassert binary_search([1, 3, 5], 4) == -1",
    ),
    (
        "celsius_to_fahrenheit",
        "converts a temperature from Celsius to Fahrenheit",
        '''def celsius_to_fahrenheit(celsius: float) -> float:
    """Convert degrees Celsius to degrees Fahrenheit: F = C × 9/5 + 32."""
    return celsius * 9 / 5 + 32''',
        "The formula scales the Celsius value by 9/5, because a Fahrenheit degree is smaller, and then shifts it by 32, the freezing point of water in Fahrenheit.",
        "It is a constant-time arithmetic expression.",
        "assert celsius_to_fahrenheit(100) == 212\nassert celsius_to_fahrenheit(-40) == -40",
    ),
    (
        "dedupe",
        "removes duplicates from a list while keeping the original order",
        '''def dedupe(items: list) -> list:
    """Return items without repeats, keeping the first occurrence of each."""
    seen = set()
    result = []
    for item in items:
        if item not in seen:
            seen.add(item)
            result.append(item)
    return result''',
        "A set remembers what has already been kept, so each membership test is fast, while the list preserves the order of first appearance. "
        "For hashable items, `list(dict.fromkeys(items))` is an equivalent one-liner.",
        "Set lookups are O(1) on average, so the whole function is O(n).",
        'assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]\nassert dedupe(["a", "b", "a"]) == ["a", "b"]',
    ),
    (
        "gcd",
        "computes the greatest common divisor of two integers",
        '''def gcd(a: int, b: int) -> int:
    """Greatest common divisor of a and b by Euclid's algorithm."""
    a, b = abs(a), abs(b)
    while b:
        a, b = b, a % b
    return a''',
        "Euclid's algorithm relies on the fact that gcd(a, b) equals gcd(b, a mod b). Repeating the step shrinks the numbers until the remainder is zero.",
        "The number of steps grows with the number of digits, O(log min(a, b)).",
        "assert gcd(48, 18) == 6\nassert gcd(7, 0) == 7",
    ),
    (
        "primes_up_to",
        "lists all prime numbers up to a limit with the sieve of Eratosthenes",
        '''def primes_up_to(limit: int) -> list[int]:
    """Return the primes p with 2 <= p <= limit (sieve of Eratosthenes)."""
    if limit < 2:
        return []
    is_prime = [True] * (limit + 1)
    is_prime[0] = is_prime[1] = False
    for p in range(2, int(limit ** 0.5) + 1):
        if is_prime[p]:
            for multiple in range(p * p, limit + 1, p):
                is_prime[multiple] = False
    return [n for n, prime in enumerate(is_prime) if prime]''',
        "The sieve starts by assuming every number is prime and crosses out the multiples of each prime it finds. "
        "It can start at p * p because smaller multiples were already crossed out by smaller primes.",
        "The sieve runs in O(n log log n) time and needs O(n) memory.",
        "assert primes_up_to(20) == [2, 3, 5, 7, 11, 13, 17, 19]",
    ),
    (
        "slugify",
        "turns a title into a URL slug",
        '''import re
import unicodedata


def slugify(title: str) -> str:
    """Lowercase ASCII slug: "Crème Brûlée!" -> "creme-brulee"."""
    normalized = unicodedata.normalize("NFKD", title)
    ascii_text = normalized.encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")''',
        "NFKD normalisation splits accented letters such as é into a base letter plus a combining accent, and encoding to ASCII with "
        "`ignore` drops the accents. A regular expression then replaces every run of other characters with a single hyphen.",
        "Each step is a single pass over the string, so it is linear in its length.",
        'assert slugify("Crème Brûlée!") == "creme-brulee"\nassert slugify("  Hello, World  ") == "hello-world"',
    ),
    (
        "caesar_cipher",
        "encrypts text with a Caesar cipher",
        '''def caesar_cipher(text: str, shift: int) -> str:
    """Shift each ASCII letter by shift places, wrapping around; keep other characters."""
    result = []
    for ch in text:
        if "a" <= ch <= "z":
            result.append(chr((ord(ch) - ord("a") + shift) % 26 + ord("a")))
        elif "A" <= ch <= "Z":
            result.append(chr((ord(ch) - ord("A") + shift) % 26 + ord("A")))
        else:
            result.append(ch)
    return "".join(result)''',
        "Each letter is converted to its position in the alphabet, shifted, wrapped with `% 26`, and converted back. "
        "Decrypting is the same call with the negative shift.",
        "One pass over the text: O(n).",
        'assert caesar_cipher("Hello, World", 3) == "Khoor, Zruog"\nassert caesar_cipher("Khoor", -3) == "Hello"',
    ),
    (
        "to_roman",
        "converts an integer to Roman numerals",
        '''def to_roman(number: int) -> str:
    """Roman numeral for 1 <= number <= 3999."""
    if not 1 <= number <= 3999:
        raise ValueError(f"number out of range: {number}")
    values = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
              (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
    parts = []
    for value, symbol in values:
        count, number = divmod(number, value)
        parts.append(symbol * count)
    return "".join(parts)''',
        "The table lists every symbol, including the subtractive pairs like CM and IV, from largest to smallest. "
        "`divmod` tells how many times each value fits and what is left over.",
        "The table has a fixed size, so the conversion takes constant time.",
        'assert to_roman(1994) == "MCMXCIV"\nassert to_roman(4) == "IV"',
    ),
    (
        "are_anagrams",
        "checks whether two words are anagrams",
        '''def are_anagrams(first: str, second: str) -> bool:
    """True if the two strings use the same letters the same number of times."""
    normalize = lambda s: sorted(s.replace(" ", "").lower())
    return normalize(first) == normalize(second)''',
        "Sorting the letters of both strings gives a canonical form; two anagrams have the same sorted letters. "
        "Spaces are removed and case is ignored first.",
        "Sorting dominates, so it takes O(n log n); a `Counter` comparison would be O(n).",
        'assert are_anagrams("Listen", "Silent")\nassert not are_anagrams("apple", "paper")',
    ),
    (
        "median",
        "computes the median of a list of numbers",
        '''def median(values: list[float]) -> float:
    """Median of a non-empty list (mean of the two middle values for even lengths)."""
    if not values:
        raise ValueError("median of an empty list")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2''',
        "After sorting, the median is the middle element for an odd count, or the average of the two middle elements for an even count.",
        "Sorting makes it O(n log n); the standard library also offers `statistics.median`.",
        "assert median([3, 1, 2]) == 2\nassert median([4, 1, 3, 2]) == 2.5",
    ),
    (
        "transpose",
        "transposes a matrix given as a list of rows",
        '''def transpose(matrix: list[list[float]]) -> list[list[float]]:
    """Swap rows and columns of a rectangular matrix."""
    return [list(column) for column in zip(*matrix)]''',
        "`zip(*matrix)` passes every row as a separate argument, so zip groups the first elements together, then the second ones, and so on: exactly the columns.",
        "Every element is copied once: O(rows × columns).",
        "assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]",
    ),
    (
        "group_by",
        "groups records by the value of a key",
        '''from collections import defaultdict


def group_by(records: list[dict], key: str) -> dict:
    """Map each value of records[i][key] to the list of records that have it."""
    groups = defaultdict(list)
    for record in records:
        groups[record[key]].append(record)
    return dict(groups)''',
        "`defaultdict(list)` creates an empty list the first time a key is seen, so every record can be appended without checking first.",
        "A single pass over the records: O(n).",
        'rows = [{"city": "Oslo", "n": 1}, {"city": "Lima", "n": 2}, {"city": "Oslo", "n": 3}]\nassert [r["n"] for r in group_by(rows, "city")["Oslo"]] == [1, 3]',
    ),
    (
        "top_k_words",
        "finds the k most frequent words in a text",
        '''import re
from collections import Counter


def top_k_words(text: str, k: int = 3) -> list[tuple[str, int]]:
    """The k most common words with their counts, most frequent first."""
    words = re.findall(r"[a-z']+", text.lower())
    return Counter(words).most_common(k)''',
        "A regular expression extracts the words, `Counter` tallies them, and `most_common(k)` returns the k largest counts in order.",
        "Counting is O(n); `most_common(k)` uses a heap, O(m log k) for m distinct words.",
        'assert top_k_words("the sun and the moon and the stars", 2) == [("the", 3), ("and", 2)]',
    ),
    (
        "reverse_words",
        "reverses the order of the words in a sentence",
        '''def reverse_words(sentence: str) -> str:
    """Return the words of sentence in reverse order, separated by single spaces."""
    return " ".join(reversed(sentence.split()))''',
        "`split()` without arguments splits on any run of whitespace and drops empty strings, `reversed` walks the list backwards, and `join` glues the words back together.",
        "Linear in the length of the sentence.",
        'assert reverse_words("the quick brown fox") == "fox brown quick the"',
    ),
    (
        "Timer",
        "measures how long a block of code takes, as a context manager",
        '''import time


class Timer:
    """Context manager that records the elapsed wall-clock time in seconds."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.elapsed = time.perf_counter() - self.start
        return False''',
        "`__enter__` stores the start time and returns the timer so it can be bound with `as`; `__exit__` runs even if the block raises, "
        "computes the elapsed time, and returns False so exceptions are not swallowed. `perf_counter` is the right clock for measuring intervals.",
        "The overhead is two clock reads.",
        "with Timer() as t:\n    sum(range(1000))\nassert t.elapsed >= 0",
    ),
    (
        "retry",
        "retries a function call a few times when it raises",
        '''import functools
import time


def retry(times: int = 3, delay: float = 0.1):
    """Decorator: call the function up to `times` times, sleeping `delay` seconds between failures."""
    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            for attempt in range(1, times + 1):
                try:
                    return func(*args, **kwargs)
                except Exception:
                    if attempt == times:
                        raise
                    time.sleep(delay)
        return wrapper
    return decorator''',
        "`retry` takes the settings and returns the real decorator; the wrapper calls the function in a loop and re-raises the last error when every attempt has failed. "
        "`functools.wraps` keeps the original name and docstring.",
        "In the worst case it makes `times` calls and sleeps `times - 1` times.",
        "calls = []\n@retry(times=3, delay=0)\ndef flaky():\n    calls.append(1)\n    if len(calls) < 3:\n        raise RuntimeError\n    return 'ok'\nassert flaky() == 'ok' and len(calls) == 3",
    ),
    (
        "read_config",
        "loads a JSON configuration file with default values",
        '''import json
from pathlib import Path

DEFAULTS = {"host": "localhost", "port": 8080, "debug": False}


def read_config(path: str) -> dict:
    """Read a JSON object from path and fill in missing keys from DEFAULTS."""
    text = Path(path).read_text(encoding="utf-8")
    loaded = json.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(loaded).__name__}")
    return {**DEFAULTS, **loaded}''',
        "The file is read as UTF-8 text and parsed with `json.loads`. Merging `{**DEFAULTS, **loaded}` lets the file's values win while the defaults fill the gaps.",
        "Linear in the size of the file.",
        "import tempfile, os\nwith tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:\n    f.write('{\"port\": 9000}')\nassert read_config(f.name)['port'] == 9000\nos.remove(f.name)",
    ),
    (
        "running_mean",
        "computes the running average of a stream of numbers",
        '''def running_mean(values):
    """Yield the mean of the values seen so far after each new value."""
    total = 0.0
    for count, value in enumerate(values, start=1):
        total += value
        yield total / count''',
        "The generator keeps only the running total and the count, so it works on streams that do not fit in memory. "
        "`enumerate(..., start=1)` supplies the count.",
        "O(1) work and memory per value.",
        "assert list(running_mean([2, 4, 6])) == [2.0, 3.0, 4.0]",
    ),
    (
        "count_vowels",
        "counts the vowels in a string, including accented ones",
        '''import unicodedata


def count_vowels(text: str) -> int:
    """Count a, e, i, o, u (any case, with or without accents such as é or ü)."""
    base = unicodedata.normalize("NFD", text.lower())
    return sum(1 for ch in base if ch in "aeiou")''',
        "NFD normalisation decomposes é into e followed by a combining accent, so the accented vowels are counted through their base letter.",
        "One pass over the normalised text: O(n).",
        'assert count_vowels("Über café") == 4\nassert count_vowels("rhythm") == 0',
    ),
    (
        "fizzbuzz",
        "prints the FizzBuzz sequence",
        '''def fizzbuzz(n: int) -> list[str]:
    """FizzBuzz for 1..n: multiples of 3 -> Fizz, of 5 -> Buzz, of both -> FizzBuzz."""
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out''',
        "Building the word from two independent parts handles the multiples of 15 without a special case; an empty word falls back to the number.",
        "O(n) for n numbers.",
        'assert fizzbuzz(15)[-1] == "FizzBuzz"\nassert fizzbuzz(5) == ["1", "2", "Fizz", "4", "Buzz"]',
    ),
]

CODE_ASKS = [
    "Write a Python function that {what}.",
    "Can you write a function in Python that {what}?",
    "I need a small Python helper that {what}. Please include a docstring.",
    "How would I write a Python function that {what}?",
    "Please implement `{name}` in Python: it {what}.",
    "Show me a clean Python implementation of a function that {what}.",
    "Could you give me Python code for a function that {what}, with a short explanation?",
]

CODE_ANSWERS = [
    "Here is a straightforward implementation:\n\n```python\n{code}\n```\n\n{explain}",
    "```python\n{code}\n```\n\n{explain} {complexity}",
    "Sure! Here's one way to do it.\n\n```python\n{code}\n```\n\nHow it works: {explain}",
    "You can write it like this:\n\n```python\n{code}\n```\n\n{explain}\n\nComplexity: {complexity}",
]

EXPLAIN_ASKS = [
    "What does this function do?\n\n```python\n{code}\n```",
    "Can you explain this code to me?\n\n```python\n{code}\n```",
    "I found this in our codebase. How does it work?\n\n```python\n{code}\n```",
]

EXPLAIN_ANSWERS = [
    "`{name}` {what}. {explain} {complexity}",
    "This function {what}.\n\n{explain}\n\n{complexity}",
]

CODE_FOLLOWUPS = [
    ("What is its time complexity?", "{complexity}"),
    ("Can you show a quick test for it?", "A couple of assertions are enough to check the main cases:\n\n```python\n{test}\n```"),
    ("How would I test this?", "You can check it with plain assertions, or put them in a pytest test function:\n\n```python\n{test}\n```"),
    ("Thanks! Why did you write it that way?", "{explain}"),
]

# --- Prose questions: (question variants, answer, follow-up question, follow-up answer) ---
PROSE = [
    (
        ["Why is the sky blue?", "What makes the sky look blue during the day?"],
        "Sunlight contains every colour, but air molecules scatter short wavelengths much more strongly than long ones (Rayleigh scattering, roughly proportional to 1/λ⁴). "
        "Blue light is therefore scattered across the whole sky and reaches your eyes from every direction, while the direct sunlight looks slightly yellow.",
        "Then why are sunsets red?",
        "At sunset the light crosses much more air before it reaches you. Most of the blue is scattered away along the path, so the light that remains is dominated by orange and red.",
    ),
    (
        ["How do I make a good cup of tea?", "What's the best way to brew black tea?"],
        "Use freshly boiled water for black tea (about 95-100 °C), one teaspoon of leaves or one bag per cup, and steep for three to five minutes. "
        "Remove the leaves afterwards, since longer steeping releases more tannins and makes the tea bitter. Add milk or lemon to taste, not both.",
        "And green tea?",
        "Green tea is more delicate: use cooler water, around 70-80 °C, and steep it for only one to three minutes. Boiling water scalds the leaves and brings out a grassy bitterness.",
    ),
    (
        ["What is photosynthesis?", "Can you explain photosynthesis simply?"],
        "Photosynthesis is how plants, algae and some bacteria turn light into chemical energy. In the chloroplasts, chlorophyll absorbs light, "
        "and that energy is used to combine carbon dioxide and water into glucose, releasing oxygen: 6 CO₂ + 6 H₂O → C₆H₁₂O₆ + 6 O₂.",
        "Where does the oxygen come from, the CO₂ or the water?",
        "From the water. Experiments with labelled oxygen isotopes showed that the O₂ released comes from splitting water molecules in the light-dependent reactions.",
    ),
    (
        ["What's the difference between weather and climate?", "Is climate the same thing as weather?"],
        "Weather is the state of the atmosphere at a particular time and place: today's rain, tomorrow's wind. Climate is the statistical pattern of weather over "
        "long periods, usually thirty years or more. A cold week says little about climate; a trend in decades of averages does.",
        "Give me an example.",
        "A snowstorm in Madrid in January is weather. The fact that Madrid's summers have averaged several degrees warmer over recent decades is a statement about climate.",
    ),
    (
        ["Who was Ada Lovelace?", "Why is Ada Lovelace famous?"],
        "Ada Lovelace (1815-1852) was an English mathematician who worked with Charles Babbage on his proposed Analytical Engine. "
        "Her notes on the machine include a method for computing Bernoulli numbers, often called the first published computer program, "
        "and she foresaw that such machines could manipulate symbols, not just numbers.",
        "Was the Analytical Engine ever built?",
        "No. Babbage designed it but never completed it, mainly for lack of funding and the limits of precision engineering at the time. Parts of his earlier Difference Engine were later built from his drawings.",
    ),
    (
        ["How do vaccines work?", "Can you explain how a vaccine protects you?"],
        "A vaccine shows the immune system a harmless version or piece of a pathogen, such as an inactivated virus, a protein, or mRNA that instructs cells to make one. "
        "The immune system responds by producing antibodies and memory cells, so that if the real pathogen appears later it is recognised and fought off quickly.",
        "Why do some vaccines need boosters?",
        "Immune memory can fade over time, and some pathogens change. A booster dose reminds the immune system and raises antibody levels again.",
    ),
    (
        ["Any tips for learning a new language?", "How can I learn Spanish faster?"],
        "Practise a little every day rather than a lot once a week, learn the most frequent words first, and listen to real speech early, even if you understand little. "
        "Speak from the start: mistakes are how you learn. Spaced-repetition flashcards help vocabulary stick, and reading short texts you enjoy builds grammar intuitively. ¡Ánimo!",
        "How long does it take to become conversational?",
        "It depends on the language and the time you invest, but many English speakers reach basic conversations in Spanish after a few hundred hours of practice, roughly six months to a year of steady daily study.",
    ),
    (
        ["What causes the seasons?", "Why do we have summer and winter?"],
        "The seasons come from the tilt of Earth's axis, about 23.4°, not from the distance to the Sun. As Earth orbits, each hemisphere in turn leans towards the Sun, "
        "receiving more direct light and longer days (summer), and then away from it (winter).",
        "So is Earth closest to the Sun in summer?",
        "Not for the northern hemisphere: Earth is closest to the Sun in early January, during the northern winter. The difference in distance is only about 3%.",
    ),
    (
        ["What is a black hole?", "How does a black hole form?"],
        "A black hole is a region where gravity is so strong that nothing, not even light, can escape once it crosses the event horizon. "
        "Stellar black holes form when a massive star runs out of fuel and its core collapses under its own weight.",
        "Can we see them?",
        "Not directly, but we see their effects: stars orbiting an invisible mass, hot gas glowing as it falls in, and gravitational waves from mergers. In 2019 the Event Horizon Telescope imaged the shadow of the black hole in the galaxy M87.",
    ),
    (
        ["How should I prepare for a job interview?", "Any advice for my first job interview?"],
        "Research the company and the role, and prepare two or three short stories that show what you did, how, and what happened as a result. "
        "Practise answering common questions out loud, prepare a few questions of your own, and plan to arrive a little early. Afterwards, a brief thank-you note is a nice touch.",
        "What questions should I ask them?",
        "Ask about what success looks like in the first six months, how the team works together, and what the biggest challenges are right now. Avoid questions whose answers are on their website.",
    ),
    (
        ["What's the capital of Japan, and how big is it?", "Tell me a little about Tokyo."],
        "Tokyo (東京, literally \"eastern capital\") is the capital of Japan. The Greater Tokyo Area has about 37 million people, which makes it the most populous metropolitan area in the world. "
        "It became the capital in 1868, when the emperor moved there from Kyoto.",
        "What does Kyoto's name mean?",
        "Kyoto (京都) means roughly \"capital city\". It was the imperial capital for more than a thousand years before the move to Tokyo.",
    ),
    (
        ["What is the Pythagorean theorem?", "Can you explain Pythagoras' theorem?"],
        "In a right-angled triangle, the square of the hypotenuse equals the sum of the squares of the other two sides: a² + b² = c². "
        "For example, a triangle with legs 3 and 4 has a hypotenuse of 5, since 9 + 16 = 25.",
        "Does it work for other triangles?",
        "Only for right triangles. For any triangle the law of cosines generalises it: c² = a² + b² − 2ab·cos(γ), which reduces to Pythagoras when γ = 90°.",
    ),
    (
        ["How do I keep basil alive indoors?", "My basil plant keeps dying. What am I doing wrong?"],
        "Basil wants a lot of light, at least six hours of sun a day, so a south-facing window is ideal. Water when the top of the soil feels dry, "
        "but never let the pot stand in water. Pinch off the flower buds and harvest from the top, just above a pair of leaves, so the plant grows bushy.",
        "Should I fertilise it?",
        "A light feed every few weeks with a balanced liquid fertiliser helps, especially in a small pot. Too much nitrogen gives big leaves with less flavour.",
    ),
    (
        ["What is the difference between a virus and a bacterium?", "Are viruses and bacteria the same?"],
        "Bacteria are single-celled living organisms that can reproduce on their own; many are harmless or even useful. Viruses are much smaller and are not cells: "
        "they can only multiply inside a host cell. That is why antibiotics work against bacteria but not against viruses.",
        "So antibiotics don't help with a cold?",
        "Right. Colds are caused by viruses, so antibiotics do nothing for them and using them needlessly helps resistant bacteria spread.",
    ),
    (
        ["Can you recommend a way to stay focused while studying?", "How can I concentrate better when I study?"],
        "Try the Pomodoro technique: work for 25 minutes on a single task, then take a five-minute break, and a longer break after four rounds. "
        "Put your phone in another room, decide in advance what you will finish in each session, and test yourself instead of rereading notes.",
        "Why does testing myself help?",
        "Retrieving information from memory strengthens it more than seeing it again. This \"testing effect\" is one of the most reliable findings in learning research.",
    ),
    (
        ["What is inflation?", "Why do prices go up over time?"],
        "Inflation is the general rise in prices across an economy, which means each unit of money buys less over time. It is usually measured with a consumer price index. "
        "Moderate inflation, around 2% a year, is the target of many central banks; high inflation erodes savings and makes planning difficult.",
        "How do central banks fight it?",
        "Mainly by raising interest rates. Higher rates make borrowing more expensive, which cools spending and investment and eventually slows price increases.",
    ),
    (
        ["How does a refrigerator keep food cold?", "How does a fridge work?"],
        "A refrigerator pumps heat out rather than making cold. A refrigerant evaporates inside the coils in the fridge, absorbing heat from the food; "
        "a compressor then squeezes the vapour, and it releases that heat through the coils at the back as it condenses. The cycle repeats continuously.",
        "Why are the coils at the back warm?",
        "That warmth is the heat removed from inside the fridge, plus the energy used by the compressor, being released into the kitchen.",
    ),
    (
        ["Suggest a simple dinner I can cook in 20 minutes.", "What's a quick weeknight dinner idea?"],
        "Try garlic pasta with spinach: boil spaghetti, and meanwhile soften two sliced garlic cloves in olive oil with a pinch of chilli. "
        "Add a few handfuls of spinach until wilted, toss with the pasta and a splash of the cooking water, and finish with lemon zest and grated Parmesan.",
        "Can I make it vegan?",
        "Yes: skip the Parmesan and add toasted breadcrumbs or a spoonful of nutritional yeast for a savoury finish. A few white beans make it more filling.",
    ),
    (
        ["What does 'déjà vu' mean?", "Where does the phrase déjà vu come from?"],
        "Déjà vu is French for \"already seen\". It describes the uncanny feeling that you have already experienced the present moment, "
        "even though you know you have not. It is common, usually brief, and is thought to come from a mismatch between familiarity and recall in memory.",
        "Are there other French phrases used in English like that?",
        "Plenty: café, naïve, résumé, rendez-vous, fiancé, coup d'état and à la carte are all borrowed from French, often with their accents.",
    ),
    (
        ["Why do cats purr?", "What does it mean when a cat purrs?"],
        "Cats purr by rapidly twitching the muscles of the larynx as they breathe in and out, at about 25 to 150 vibrations per second. "
        "Purring often signals contentment, but cats also purr when stressed, hurt, or giving birth, so it may be a way of soothing themselves.",
        "Do big cats purr too?",
        "Cheetahs, pumas and other small wild cats purr, but lions and tigers mostly cannot: their larynx is built for roaring instead.",
    ),
    (
        ["What is the speed of light?", "How fast does light travel?"],
        "In a vacuum light travels at exactly 299,792,458 metres per second, about 300,000 km/s. That constant, written c, is the same for every observer, "
        "and it is the speed limit for anything carrying information.",
        "How long does sunlight take to reach Earth?",
        "About 8 minutes and 20 seconds, since the Sun is roughly 150 million kilometres away.",
    ),
    (
        ["How do I write a good commit message?", "What makes a commit message useful?"],
        "Start with a short summary line, about 50 characters, written in the imperative (\"Fix crash when the file is empty\"). "
        "Leave a blank line, then explain why the change was needed and anything surprising about it. The diff already shows what changed; the message should say why.",
        "Should I commit often?",
        "Yes, in small steps that each leave the project working. Small commits are easier to review, to revert and to search with tools like git bisect.",
    ),
    (
        ["What is a prime number?", "How can I tell if a number is prime?"],
        "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, like 2, 3, 5, 7 and 11. "
        "To check a number n, it is enough to try dividing by every integer from 2 up to √n: if none divides it, n is prime.",
        "Why only up to the square root?",
        "If n = a × b and both a and b were larger than √n, their product would exceed n. So any factorisation has a factor no larger than √n.",
    ),
    (
        ["Summarise the plot of Romeo and Juliet in a few sentences.", "What happens in Romeo and Juliet?"],
        "In Verona, Romeo and Juliet, children of two feuding families, fall in love and marry in secret. After Romeo kills Juliet's cousin Tybalt in a fight, he is banished. "
        "Juliet fakes her death to escape an arranged marriage, but the message explaining the plan never reaches Romeo; believing she is dead, he poisons himself, "
        "and Juliet, waking to find him dead, takes her own life. Their deaths finally reconcile the families.",
        "Who wrote it, and when?",
        "William Shakespeare, probably around 1594-1596.",
    ),
    (
        ["What is the difference between RAM and storage?", "Why does my computer need both memory and a disk?"],
        "RAM is fast, temporary working memory: it holds the programs and data in use right now and is cleared when the power goes off. "
        "Storage (an SSD or hard drive) is slower but keeps data permanently. More RAM lets you run more at once; more storage lets you keep more files.",
        "Is an SSD much faster than a hard drive?",
        "Yes. An SSD has no moving parts, so it can read small pieces of data many times faster than a spinning hard drive, which makes booting and opening programs much quicker.",
    ),
    (
        ["Explain recursion like I'm five.", "What is recursion in programming?"],
        "Recursion is when a function solves a problem by calling itself on a smaller piece of the same problem. "
        "Think of Russian nesting dolls: to count them, open one doll, count it, and then count the dolls inside the same way, until you reach the smallest doll, which has nothing inside. "
        "That smallest doll is the base case that stops the process.",
        "What happens if there's no base case?",
        "The function keeps calling itself forever, until the program runs out of stack space. In Python you get a RecursionError after about a thousand nested calls.",
    ),
]

PROSE_PREFIXES = ["", "", "", "Quick question: ", "Hi! ", "I was wondering: ", "Hello. "]


def _code_example(rng: random.Random) -> list[dict[str, str]]:
    name, what, code, explain, complexity, test = rng.choice(CODE)
    fill = dict(name=name, what=what, code=code, explain=explain, complexity=complexity, test=test)
    if rng.random() < 0.3:
        user = rng.choice(EXPLAIN_ASKS).format(**fill)
        assistant = rng.choice(EXPLAIN_ANSWERS).format(**fill)
        assistant = assistant[0].upper() + assistant[1:]
    else:
        user = rng.choice(CODE_ASKS).format(**fill)
        assistant = rng.choice(CODE_ANSWERS).format(**fill)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    if rng.random() < 0.35:
        question, answer = rng.choice(CODE_FOLLOWUPS)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.format(**fill)}]
    return messages


def _prose_example(rng: random.Random) -> list[dict[str, str]]:
    questions, answer, follow_q, follow_a = rng.choice(PROSE)
    user = rng.choice(PROSE_PREFIXES) + rng.choice(questions)
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    if rng.random() < 0.4:
        messages += [{"role": "user", "content": follow_q}, {"role": "assistant", "content": follow_a}]
    return messages


def generate(count: int = DEFAULT_COUNT, seed: int = SEED) -> list[dict]:
    """``count`` conversations, the same for the same ``seed``."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < count:
        messages = _code_example(rng) if rng.random() < 0.5 else _prose_example(rng)
        if rng.random() < 0.4:
            messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] + messages
        key = json.dumps(messages, sort_keys=True)
        if key in seen:  # every conversation is distinct
            continue
        seen.add(key)
        rows.append({"messages": messages})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="chat_demo.jsonl", help="output file (default: ./chat_demo.jsonl)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    if args.count <= 0:
        parser.error(f"--count {args.count} must be a positive integer")
    if Path(args.out).exists() and not args.overwrite:
        print(f"make_chat_demo: error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    rows = generate(args.count, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} conversations to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
