"""MERLOT's special token ids, as in the original: ids below NUM_SPECIAL are reserved (tokenizers shift their
own ids past them) and are never masked or drawn as random replacements."""

PAD = 0
MASK = 1
START = 2  # opens a segment of clean (denoised) transcript
END = 3
NEXT_CAPTION_TIME = 4
NEXT_CAPTION_START = 5  # opens a segment of raw ASR transcript
NEXT_CAPTION_END = 6
NUM_SPECIAL = 100
