"""Finding utterances (LibriSpeech layout, manifests) and the header checks that skip them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from asr import corpus


def tone(seconds: float, rate: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def test_librispeech_layout_of_tiny_corpus(tiny_corpus):
    assert corpus.list_subsets(tiny_corpus) == ["dev-clean", "test-clean", "train-clean"]
    found = corpus.librispeech_candidates(tiny_corpus, "train-clean")
    assert len(found) == 20
    assert [c.utt_id for c in found] == sorted(c.utt_id for c in found)
    first = found[0]
    assert first.path.endswith(f"{first.utt_id}.flac")
    assert first.transcript and first.transcript == first.transcript.upper()


def test_check_subsets_names_what_exists(tiny_corpus, tmp_path):
    corpus.check_subsets(tiny_corpus, ["dev-clean"])
    known = r"unknown subset 'train-other'.*dev-clean, test-clean, train-clean"
    with pytest.raises(corpus.CorpusError, match=known):
        corpus.check_subsets(tiny_corpus, ["train-other"])
    with pytest.raises(corpus.CorpusError, match="corpus directory not found"):
        corpus.check_subsets(tmp_path / "nowhere", ["dev-clean"])


def test_missing_transcript_line_gives_none(tmp_path):
    chapter = tmp_path / "sub" / "7" / "70"
    chapter.mkdir(parents=True)
    for index in range(2):
        soundfile.write(chapter / f"7-70-000{index}.flac", tone(0.5), 16000)
    (chapter / "7-70.trans.txt").write_text("7-70-0000 HELLO\n")
    found = corpus.librispeech_candidates(tmp_path, "sub")
    assert [(c.utt_id, c.transcript) for c in found] == [("7-70-0000", "HELLO"), ("7-70-0001", None)]


def test_csv_and_jsonl_manifests_agree(tmp_path):
    (tmp_path / "audio").mkdir()
    soundfile.write(tmp_path / "audio" / "a.wav", tone(0.5), 16000)
    soundfile.write(tmp_path / "audio" / "b.flac", tone(0.5), 16000)
    (tmp_path / "list.csv").write_text('audio,text,id\naudio/a.wav,"hi, there",x1\naudio/b.flac,bye,\n')
    rows = [
        {"audio": "audio/a.wav", "text": "hi, there", "id": "x1"},
        {"audio": "audio/b.flac", "text": "bye"},
    ]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    from_csv = corpus.manifest_candidates(tmp_path / "list.csv")
    assert from_csv == corpus.manifest_candidates(tmp_path / "list.jsonl")
    assert [(c.utt_id, c.transcript) for c in from_csv] == [("audio-b", "bye"), ("x1", "hi, there")]
    assert from_csv[1].path == str(tmp_path / "audio" / "a.wav")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"audio": "a.wav"}\n{not json\n', "line 2: not JSON"),
        ("path,text\na.wav,hi\n", "'audio' column"),
        ('{"audio": "a.wav", "id": "u"}\n{"audio": "b.wav", "id": "u"}\n', "duplicate id 'u'"),
    ],
)
def test_bad_manifests_raise_naming_the_line(tmp_path, content, message):
    path = tmp_path / ("list.jsonl" if content.startswith("{") else "list.csv")
    path.write_text(content)
    with pytest.raises(corpus.CorpusError, match=message):
        corpus.manifest_candidates(path)


def test_probe_reasons(tmp_path):
    def candidate(name, audio, rate=16000, transcript="HELLO"):
        path = tmp_path / f"{name}.flac"
        if audio is None:
            path.write_bytes(b"fLaC this is not audio")
        else:
            soundfile.write(path, audio, rate)
        return corpus.Candidate(name, str(path), transcript)

    def reason(result):
        return result.reason if isinstance(result, corpus.Skipped) else "kept"

    cases = {
        "kept": candidate("ok", tone(1.0)),
        "too long": candidate("long", tone(3.0)),
        "too short": candidate("short", tone(0.05)),
        "not mono": candidate("stereo", tone(1.0, channels=2)),
        "unreadable audio": candidate("garbage", None),
        "missing transcript": candidate("untranscribed", tone(1.0), transcript=None),
        "unmappable text: '1' '2'": candidate("digits", tone(1.0), transcript="ROOM 12"),
        "empty transcript": candidate("empty", tone(1.0), transcript=" ... "),
    }
    for expected, item in cases.items():
        assert reason(corpus.probe(item, max_duration=2.0, resample=True)) == expected, item.utt_id
    at_8k = candidate("eight", tone(1.0, rate=8000), rate=8000)
    assert reason(corpus.probe(at_8k, 2.0, resample=True)) == "kept"
    assert reason(corpus.probe(at_8k, 2.0, resample=False)) == "wrong sample rate"
    planned = corpus.probe(cases["kept"], 2.0, True)
    assert planned == corpus.Planned("ok", cases["kept"].path, "hello", 1.0)  # exact: 16000 / 16000 samples
    assert corpus.reason_key("unmappable text: '1' '2'") == "unmappable text"


def test_speed_perturbed_plans_have_kaldi_ids_and_the_perturbed_length(tiny_corpus):
    assert corpus.perturbed_length(16000, 0.9) == round(16000 / 0.9) == 17778
    assert corpus.perturbed_length(16001, 1.1) == round(16001 / 1.1) and corpus.perturbed_length(7, 1.0) == 7
    assert corpus.speed_ratio(0.9) == (9, 10) and corpus.speed_id("1-2-3", 1.1) == "sp1.1-1-2-3"
    for factor in (0.9, 1.0, 1.1, 1.25):
        assert corpus.unperturbed_id(corpus.speed_id("1-2-3", factor)) == "1-2-3"
    assert corpus.unperturbed_id("spk7-1-2") == "spk7-1-2"  # an id that starts with "sp" is not a copy
    candidate = corpus.librispeech_candidates(tiny_corpus, "dev-clean")[0]
    original = corpus.probe(candidate, 30.0, True)
    slower = corpus.probe(candidate, 30.0, True, speed=0.9)
    assert slower.utt_id == f"sp0.9-{candidate.utt_id}" and slower.text == original.text
    assert slower.duration == pytest.approx(original.duration / 0.9, abs=1 / 16000)
    short = corpus.probe(candidate, original.duration * 1.05, True, speed=0.9)
    assert short.reason == corpus.TOO_LONG and short.utt_id == slower.utt_id
    planned = corpus.probe_many([candidate], 30.0, True, (0.9, 1.1))
    assert [p.speed for p in planned] == [1.0, 0.9, 1.1]
