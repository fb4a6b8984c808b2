"""What several test modules share, imported as ``helpers.<module>`` (pytest puts
``tests/`` on the path): ``distill`` (synthetic rows, tiny models and trainer configs),
``a2d`` (dllm's A2D classes or stand-ins), ``eval_fixtures`` (tiny local copies of the
paper suite's datasets), ``markdown`` (the README's and docs pages' headings, sections
and links) and ``mp_distill`` (the script the two-process test launches)."""
