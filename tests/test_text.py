import pytest

from asr import text


def test_alphabet_has_thirty_symbols_with_blank_last():
    assert text.NUM_SYMBOLS == 30
    assert text.BLANK_ID == 29
    assert text.SYMBOLS[0] == " " and text.SYMBOLS[1] == "a" and text.SYMBOLS[26] == "z"
    assert text.SYMBOLS[27] == "'" and text.SEPARATOR_ID == 28


def test_double_letters_get_the_separator():
    assert text.encode("cool") == [3, 15, 28, 15, 12]
    assert text.encode("a  b".replace("  ", " ")) == [1, 0, 2]


@pytest.mark.parametrize(
    "sentence",
    ["cool", "bookkeeper", "don't stop", "aaa", "", "the quick brown fox jumps over the lazy dog's back"],
)
def test_encode_decode_round_trip(sentence):
    assert text.decode(text.encode(sentence)) == sentence


def test_librispeech_transcripts_normalize_to_lower_case():
    assert text.normalize("HE'S GONE  AWAY") == "he's gone away"


def test_other_corpora_punctuation_accents_and_dashes_are_mapped():
    assert text.normalize("Café — “Well,” she said… it’s well-known!") == "cafe well she said it's well known"


@pytest.mark.parametrize("bad", ["ROOM 101", "a & b", "x_y", "日本"])
def test_unmappable_characters_are_named(bad):
    with pytest.raises(text.UnmappableTextError) as caught:
        text.normalize(bad)
    assert caught.value.characters
    assert repr(caught.value.characters[0]) in str(caught.value)


def test_ctc_collapse_merges_runs_then_drops_blanks():
    b = text.BLANK_ID
    frames = [b, 3, 3, b, 15, 15, 28, 15, b, b, 12, 12]
    assert text.ctc_collapse(frames) == [3, 15, 28, 15, 12]
    assert text.decode(text.ctc_collapse(frames)) == "cool"
    assert text.ctc_collapse([1, b, 1]) == [1, 1]
    assert text.ctc_collapse([]) == []
