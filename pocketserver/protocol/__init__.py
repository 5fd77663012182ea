"""The Matrix protocol core: pure functions and values, no I/O.

Nothing here imports trio, apsw, quart, the clock or randomness, nor anything else of
pocketserver outside this package (tests/test_layering.py checks it).
"""
