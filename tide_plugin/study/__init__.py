"""``tide study``: TIDE's comparison in miniature on real text from the running Python
(corpus, tokenizers, teachers, arms, held-out bits per byte, report). See :mod:`.cli`."""
