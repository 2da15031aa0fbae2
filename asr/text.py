"""The 30-symbol output alphabet, transcript normalization, and label encoding.

The alphabet is the paper's (section 4.4.3): space, a–z, apostrophe, a *separation* symbol and
the CTC blank. CTC merges repeated labels, so a double letter ("cool") is trained with the
separation symbol between the two letters (``c o _ o l``); decoding removes it again.

Ids are fixed: space 0, a–z 1–26, apostrophe 27, separation 28, blank 29 (the last index,
``tf.nn.ctc_loss(blank_index=BLANK_ID)``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

SPACE = " "
APOSTROPHE = "'"
SEPARATOR = "_"
BLANK = "<b>"

SYMBOLS: tuple[str, ...] = (SPACE, *"abcdefghijklmnopqrstuvwxyz", APOSTROPHE, SEPARATOR, BLANK)
NUM_SYMBOLS = len(SYMBOLS)
SPACE_ID = SYMBOLS.index(SPACE)
SEPARATOR_ID = SYMBOLS.index(SEPARATOR)
BLANK_ID = SYMBOLS.index(BLANK)
_ID_OF = {symbol: index for index, symbol in enumerate(SYMBOLS)}

_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'", "ʼ": "'"})
_DROPPED_PUNCTUATION = re.compile(r"[.,;:!?\"“”„()\[\]{}]")
_WORD_BREAKS = re.compile(r"[-–—/\s]+")


class UnmappableTextError(ValueError):
    """A transcript has characters that normalization cannot map into the alphabet."""

    def __init__(self, text: str, characters: Sequence[str]):
        self.characters = tuple(characters)
        shown = " ".join(repr(c) for c in self.characters)
        super().__init__(f"characters outside the alphabet: {shown} in {text!r}")


def normalize(text: str) -> str:
    """Map a transcript onto the alphabet's characters (lower case, single spaces).

    Accents are stripped (``é`` → ``e``), typographic apostrophes become ``'``, sentence
    punctuation is dropped and dashes separate words, so transcripts from corpora other than
    LibriSpeech (already upper case, no punctuation) can be used. Anything else, digits for
    instance, cannot be spelled in the alphabet without guessing: raises
    :class:`UnmappableTextError` naming the characters.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    lowered = _DROPPED_PUNCTUATION.sub("", stripped.lower())
    collapsed = _WORD_BREAKS.sub(" ", lowered).strip()
    bad = sorted({c for c in collapsed if c not in _ID_OF or c in (SEPARATOR, BLANK)})
    if bad:
        raise UnmappableTextError(text, bad)
    return collapsed


def encode(text: str) -> list[int]:
    """Label ids for a normalized transcript, with the separator between equal neighbours."""
    labels: list[int] = []
    for char in text:
        label = _ID_OF.get(char)
        if label is None or label in (SEPARATOR_ID, BLANK_ID):
            raise UnmappableTextError(text, [char])
        if labels and labels[-1] == label:
            labels.append(SEPARATOR_ID)
        labels.append(label)
    return labels


def decode(labels: Iterable[int]) -> str:
    """Text for label ids: separators and blanks are removed, so ``decode(encode(t)) == t``."""
    return "".join(SYMBOLS[i] for i in labels if i not in (SEPARATOR_ID, BLANK_ID))


def ctc_collapse(frame_labels: Iterable[int]) -> list[int]:
    """Best-path CTC collapse: merge runs of the same label, then drop blanks."""
    collapsed: list[int] = []
    previous = None
    for label in frame_labels:
        label = int(label)
        if label != previous and label != BLANK_ID:
            collapsed.append(label)
        previous = label
    return collapsed
