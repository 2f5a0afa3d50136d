"""`python -m aape_jax.prompts check|generate`, and generation with a tiny random causal LM."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from aape_jax.clip.tokenizer import bytes_to_unicode
from aape_jax.prompts import cli
from aape_jax.prompts import generate as gen

REPO = pathlib.Path(__file__).resolve().parents[1]


def write(path: pathlib.Path, content) -> pathlib.Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def run_main(capsys, *argv: str) -> tuple[int, list[str], str]:
    """(exit status, stdout lines, stderr) of cli.main(argv)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err


# --- check ---------------------------------------------------------------------------

def test_check_all_covered(tmp_path, capsys):
    names = write(tmp_path / "names.txt", "cat\nYorkshire_Terrier\n\ncat\n")
    prompts = write(tmp_path / "p.json", {"cat": ["A cat."], "yorkshire terrier": ["A dog."], "extra": ["x."]})
    code, out, _ = run_main(capsys, "check", "--classnames", str(names), "--prompts", str(prompts))
    assert code == 0
    assert json.loads(out[-1]) == {"dataset": "names", "classes": 3, "covered": 3, "missing": []}


def test_check_missing_listed_one_per_line(tmp_path, capsys):
    names = write(tmp_path / "names.txt", "cat\ndog\neel\ndog\n")
    prompts = write(tmp_path / "p.json", {"cat": ["A cat."]})
    code, out, _ = run_main(capsys, "check", "--classnames", str(names), "--prompts", str(prompts),
                            "--dataset", "mine")
    assert code == 1
    assert json.loads(out[-1]) == {"dataset": "mine", "classes": 4, "covered": 1, "missing": ["dog", "eel"]}
    assert "  dog" in out and "  eel" in out


def test_check_user_aliases(tmp_path, capsys):
    names = write(tmp_path / "names.txt", "face\n")
    prompts = write(tmp_path / "p.json", {"centered face": ["A face."]})
    aliases = write(tmp_path / "a.json", {"face": "centered face"})
    code, out, _ = run_main(capsys, "check", "--classnames", str(names), "--prompts", str(prompts),
                            "--aliases", str(aliases))
    assert code == 0 and json.loads(out[-1])["covered"] == 1
    bad = write(tmp_path / "b.json", {"face": "centred face"})
    code, out, err = run_main(capsys, "check", "--classnames", str(names), "--prompts", str(prompts),
                              "--aliases", str(bad))
    assert code == 2 and "'face' -> 'centred face'" in err
    assert json.loads(out[-1])["error"]


def test_check_dataset_uses_package_aliases_only_where_the_file_has_the_key(tmp_path, capsys):
    from aape_jax.data import classnames

    names = classnames.load("caltech101")
    # A file keyed by CoOp's own names (as `generate --dataset caltech101` writes):
    # the package aliases ("face" -> "off-center face", ...) must not get in the way.
    own = write(tmp_path / "own.json", {c: [f"A {c}."] for c in names})
    code, out, _ = run_main(capsys, "check", "--dataset", "caltech101", "--prompts", str(own))
    assert code == 0 and json.loads(out[-1]) == {"dataset": "caltech101", "classes": 100, "covered": 100,
                                                 "missing": []}


@pytest.mark.parametrize("case", ["unknown_dataset", "no_prompt_file", "invalid_prompt_file", "empty_names",
                                  "bad_aliases_file", "no_classes"])
def test_check_unusable_input_exits_2(tmp_path, capsys, case):
    prompts = write(tmp_path / "p.json", {"cat": ["A cat."]})
    names = write(tmp_path / "names.txt", "cat\n")
    argv = {
        "unknown_dataset": ["--dataset", "nope", "--prompts", str(prompts)],
        "no_prompt_file": ["--classnames", str(names), "--prompts", str(tmp_path / "missing.json")],
        "invalid_prompt_file": ["--classnames", str(names), "--prompts", str(write(tmp_path / "x.json", "{oops"))],
        "empty_names": ["--classnames", str(write(tmp_path / "e.txt", "\n\n")), "--prompts", str(prompts)],
        "bad_aliases_file": ["--classnames", str(names), "--prompts", str(prompts),
                             "--aliases", str(write(tmp_path / "a.json", "[1]"))],
        "no_classes": ["--prompts", str(prompts)],
    }[case]
    code, out, err = run_main(capsys, "check", *argv)
    needle = {"unknown_dataset": "unknown dataset 'nope'", "no_prompt_file": "missing.json",
              "invalid_prompt_file": "invalid JSON", "empty_names": "no class names",
              "bad_aliases_file": "a.json", "no_classes": "--dataset NAME or --classnames FILE"}[case]
    assert code == 2 and err.startswith("error: ") and needle in err
    assert needle in json.loads(out[-1])["error"]


def test_module_entry_point(tmp_path):
    names = write(tmp_path / "names.txt", "cat\ndog\n")
    prompts = write(tmp_path / "p.json", {"cat": ["A cat."]})
    proc = subprocess.run([sys.executable, "-m", "aape_jax.prompts", "check", "--classnames", str(names),
                           "--prompts", str(prompts)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["missing"] == ["dog"]


# --- generation helpers --------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (" A cat\n\nis furry. It purrs.", "A cat is furry."),
    ("no period at all ", "no period at all."),
    ("...", ""), ("  \n ", ""), ("A\x00 cat\x1b.", "A cat."),
])
def test_first_sentence(text, expected):
    assert gen.first_sentence(text) == expected


def test_ask():
    assert gen.ask("Describe what {a} {} looks like", "apple_pie") == "Describe what an apple pie looks like"
    assert gen.ask("How can you identify {a} {}?", "Yorkshire Terrier") == "How can you identify a Yorkshire Terrier?"
    assert gen.ask(gen.CUPL_QUESTIONS[4], "Annual Crop Land") == "A caption of an image of an Annual Crop Land:"
    with pytest.raises(ValueError):
        gen.ask("no slot", "cat")


def test_read_questions(tmp_path):
    assert gen.read_questions(write(tmp_path / "q.txt", "# mine\nWhat is {a} {}?\n\nDraw {}\n")) == \
        ["What is {a} {}?", "Draw {}"]
    with pytest.raises(ValueError, match=r"q2\.txt.*exactly one"):
        gen.read_questions(write(tmp_path / "q2.txt", "What is it?\n"))
    with pytest.raises(ValueError, match="no questions"):
        gen.read_questions(write(tmp_path / "q3.txt", "# only a comment\n"))


# --- generation with a tiny random LM ------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> pathlib.Path:
    """A 1-layer random GPT-2 with a byte-level tokenizer (256 bytes + <|endoftext|>, no merges)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("tiny_lm")
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=256, vocab_size=len(vocab),
                                     bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    write(directory / "vocab.json", vocab)
    write(directory / "merges.txt", "#version: 0.2\n")
    return directory


def _generate(capsys, model, out, *extra: str) -> tuple[int, list[str], str]:
    return run_main(capsys, "generate", "--model", str(model), "--out", str(out), "--per-question", "2",
                    "--max-new-tokens", "8", "--no-progress", *extra)


def test_generate_end_to_end_then_check(tiny_lm, tmp_path, capsys):
    questions = write(tmp_path / "q.txt", "Describe what {a} {} looks like\nA caption of an image of {a} {}:\n")
    names = write(tmp_path / "names.txt", "apple_pie\nAnnual Crop Land\ncat\n")
    out = tmp_path / "gen.json"
    code, lines, err = _generate(capsys, tiny_lm, out, "--classnames", str(names), "--questions", str(questions))
    assert code == 0, err
    summary = json.loads(lines[-1])
    assert summary["classes"] == 3 and summary["generated"] == 3 and summary["kept"] == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert list(data) == ["apple_pie", "Annual Crop Land", "cat"]
    for sentences in data.values():
        assert 1 <= len(sentences) <= 4 and len(set(sentences)) == len(sentences)
        assert all(s.strip() == s and len(s) > 1 and s.endswith(".") and s.count(".") == 1 for s in sentences)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]  # atomic writes leave nothing
    code, lines, _ = run_main(capsys, "check", "--classnames", str(names), "--prompts", str(out))
    assert code == 0 and json.loads(lines[-1]) == {"dataset": "names", "classes": 3, "covered": 3, "missing": []}


def test_generate_is_deterministic_and_resumes(tiny_lm, tmp_path, capsys):
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert _generate(capsys, tiny_lm, full, "--classes", "cat, dog")[0] == 0
    # A run that stopped after "dog", then resumed for both: "dog" is kept, "cat" generated,
    # and the result is what the uninterrupted run wrote (each class is seeded by its name).
    assert _generate(capsys, tiny_lm, part, "--classes", "dog")[0] == 0
    code, lines, _ = _generate(capsys, tiny_lm, part, "--classes", "cat,dog")
    assert code == 0 and json.loads(lines[-1])["generated"] == 1 and json.loads(lines[-1])["kept"] == 1
    assert json.loads(part.read_text()) == json.loads(full.read_text())
    # Existing classes are never regenerated, and other keys of the file survive.
    write(part, {"dog": ["My own dog."], "zebra": ["Stripes."]})
    code, lines, _ = _generate(capsys, tiny_lm, part, "--classes", "cat,dog")
    assert code == 0
    assert json.loads(part.read_text()) == {"cat": json.loads(full.read_text())["cat"], "dog": ["My own dog."],
                                            "zebra": ["Stripes."]}
    # A different seed gives other samples.
    other = tmp_path / "other.json"
    assert _generate(capsys, tiny_lm, other, "--classes", "cat,dog", "--seed", "1")[0] == 0
    assert json.loads(other.read_text()) != json.loads(full.read_text())


def test_generate_falls_back_when_nothing_usable(tiny_lm, tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setattr(gen, "first_sentence", lambda text: "")  # every completion unusable
    out = tmp_path / "fb.json"
    code, lines, _ = _generate(capsys, tiny_lm, out, "--classes", "car_side")
    assert code == 0 and json.loads(lines[-1])["fallback"] == ["car_side"]
    assert json.loads(out.read_text()) == {"car_side": ["A photo of a car side."]}
    assert "car_side" in caplog.text


def test_generate_with_dataset_writes_every_class(tiny_lm, tmp_path, capsys, monkeypatch):
    # Fast path: canned sentences instead of the model; what is checked is the class list
    # (EuroSAT, which has no CuPL file) and that `check --dataset` accepts the result.
    monkeypatch.setattr(gen, "describe_class", lambda model, tok, c, **kw: [f"A satellite photo of {c}."])
    out = tmp_path / "eurosat.json"
    code, lines, err = _generate(capsys, tiny_lm, out, "--dataset", "eurosat")
    assert code == 0, err
    assert json.loads(lines[-1])["classes"] == 10
    code, lines, _ = run_main(capsys, "check", "--dataset", "eurosat", "--prompts", str(out))
    assert code == 0 and json.loads(lines[-1])["covered"] == 10


@pytest.mark.parametrize("model, needle", [
    ("{tmp}/no_such_model", "does not exist"),
    ("nobody-here/no-such-model", "Offline, pass the path of a local"),  # HF_HUB_OFFLINE=1 (conftest)
    ("{tmp}/a_file.txt", "is a file"),
])
def test_generate_bad_model_exits_2(tmp_path, capsys, model, needle):
    pytest.importorskip("transformers")
    write(tmp_path / "a_file.txt", "x")
    out = tmp_path / "o.json"
    code, lines, err = _generate(capsys, model.format(tmp=tmp_path), out, "--classes", "cat")
    assert code == 2 and needle in err and needle in json.loads(lines[-1])["error"]
    assert not out.exists()


def test_generate_unknown_dataset_exits_2(tmp_path, capsys):
    code, lines, err = _generate(capsys, tmp_path, tmp_path / "o.json", "--dataset", "nope")
    assert code == 2 and "unknown dataset 'nope'" in err
