"""Deletion records a privacy officer can sign off: private, reproducible, verifiable, sequential, never lost."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from serkit.cli import run
from serkit.config import load_recipe
from serkit.errors import SerkitError
from serkit.models import load_model
from serkit.training import train
from serkit.unlearning.redaction import find_traces, identifiers_of
from serkit.unlearning.run import forget, reproduce
from serkit.unlearning.verify import verify, verify_chain
from tests.helpers import REPO, tiny_recipe

QUICK = {"adversarial_per_sample": 2, "pgd_steps": 4, "epochs": 2, "tau": 0.05}
FAST = {"epochs": 1}  # random-label, one epoch: a request in a few seconds
quiet = {"log": lambda *a: None}


@pytest.fixture(scope="module")
def model_dir(tiny_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("receipts") / "run"
    return train(load_recipe(raw=tiny_recipe(tiny_split, out, importances=True, max_epochs=3)), log=lambda *a: None).model_dir


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    assert run(["keys", "new", "-o", str(folder)]) == 0
    return folder / "signing.key", folder / "signing.pub"


@pytest.fixture(scope="module")
def signed_request(model_dir, signing, tmp_path_factory):
    """One adv-ewc request (quick settings), signed."""
    out = tmp_path_factory.mktemp("signed") / "forget-02"
    result = forget(model_dir, out, speaker="02", n=4, seed=1, method="adv-ewc", params=QUICK, sign_key=signing[0], **quiet)
    return result


def _passes(checks):
    """No check failed, and the links between receipts were checked (unsigned receipts have no signature to check)."""
    return not any(c.ok is False for c in checks) and any(c.ok is True for c in checks)


def _forget_list(tmp_path, paths, name="forget.txt"):
    file = tmp_path / name
    file.write_text("\n".join(str(p) for p in paths) + "\n")
    return file


def _training_identifiers(model_dir, tiny_manifest):
    speakers = load_model(model_dir).config["provenance"]["speakers"]["train"]
    frame = pd.read_csv(tiny_manifest, dtype=str)
    paths = list(frame[frame.speaker.isin(speakers)]["path"])
    return speakers, paths


def test_a_forgotten_model_and_its_receipt_hold_no_trace_of_any_training_speaker_or_file(signed_request, model_dir,
                                                                                        tiny_manifest, tiny_split):
    speakers, paths = _training_identifiers(model_dir, tiny_manifest)
    assert "02" in speakers and len(paths) == 48
    out = signed_request.out_dir
    assert sorted(p.name for p in out.iterdir()) == ["forget-keys.json", "model", "receipt.json", "report.md"]
    assert find_traces(out, identifiers_of(speakers, paths)) == []
    text = "\n".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".md"))
    for machine_path in (str(tiny_manifest.parent), str(model_dir), str(REPO), "/tmp/", "/work/"):
        assert machine_path not in text
    provenance = load_model(signed_request.model_dir).config["provenance"]
    assert provenance["private"] is True and "speakers" not in provenance and "manifest" not in provenance
    assert provenance["speakers_count"] == {"train": 4, "val": 1, "test": 1}
    assert provenance["unlearning"]["n"] == 4 and provenance["unlearning"]["method"] == "adv-ewc"
    assert provenance["unlearning"]["from_weights_sha256"] == signed_request.receipt["model_before"]["weights_sha256"]
    assert stat.S_IMODE(signed_request.keys_file.stat().st_mode) == 0o600
    # the check is not blind: the training model's own provenance does name them
    assert find_traces(model_dir, identifiers_of(speakers, paths))


def test_the_same_request_twice_gives_a_bit_identical_model_and_the_same_figures(model_dir, tmp_path):
    first = forget(model_dir, tmp_path / "a", speaker="03", n=4, seed=2, method="adv-ewc", params=QUICK, **quiet)
    second = forget(model_dir, tmp_path / "b", speaker="03", n=4, seed=2, method="adv-ewc", params=QUICK, **quiet)
    assert first.receipt["model_after"]["weights_sha256"] == second.receipt["model_after"]["weights_sha256"]
    assert first.receipt["evaluation"] == second.receipt["evaluation"]
    assert first.receipt["forget_set"]["commitments"] != second.receipt["forget_set"]["commitments"]  # fresh keys
    env = first.receipt["environment"]
    assert env["threads"] >= 1 and env["deterministic_algorithms"] is True and env["torch"]
    # another process, another hash seed: the same bits
    quick = [x for k, v in QUICK.items() for x in ("--set", f"{k}={v}")]
    subprocess.run([sys.executable, "-m", "serkit.cli", "forget", str(model_dir), "-o", str(tmp_path / "p"), "--speaker",
                    "03", "--n", "4", "--seed", "2", "--method", "adv-ewc", *quick], check=True, capture_output=True,
                   env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert json.loads((tmp_path / "p" / "receipt.json").read_text())["model_after"]["weights_sha256"] == \
        first.receipt["model_after"]["weights_sha256"]
    other_seed = forget(model_dir, tmp_path / "c", speaker="03", n=4, seed=3, method="adv-ewc", params=QUICK, **quiet)
    assert other_seed.receipt["model_after"]["weights_sha256"] != first.receipt["model_after"]["weights_sha256"]


def test_receipt_verify_passes_on_a_good_receipt(signed_request, signing, tiny_split, tiny_manifest, tmp_path, capsys):
    out = signed_request.out_dir
    files = _forget_list(tmp_path, _committed_files(signed_request, tiny_manifest))
    capsys.readouterr()
    code = run(["receipt", "verify", str(out / "receipt.json"), "--model", str(out / "model"), "--public-key",
                str(signing[1]), "--forget", str(files), "--key", str(out / "forget-keys.json"), "--data", str(tiny_split)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ("signature", "figures agree", "model", "forget set", "data", "figures, re-evaluated"):
        assert f"OK    {name}:" in printed
    assert "FAIL" not in printed and "all 6 checks passed" in printed


def _committed_files(result, manifest):
    """The forget set of a request, recovered as its owner would: the manifest's files, opened with the key."""
    from serkit.unlearning.commitments import commit, utterance_digest
    from serkit.unlearning.keys import load_request_keys

    key = bytes.fromhex(load_request_keys(result.keys_file).get(result.receipt["request_id"]).key)
    committed = set(result.receipt["forget_set"]["commitments"])
    return [Path(p) for p in pd.read_csv(manifest, dtype=str)["path"] if commit(key, utterance_digest(p)) in committed]


def _other_training_file(manifest, exclude, speaker="02"):
    frame = pd.read_csv(manifest, dtype=str)
    names = {str(p) for p in exclude}
    return Path(next(p for p in frame[frame.speaker == speaker]["path"] if p not in names))


def test_receipt_verify_fails_on_each_tampering_with_a_one_line_reason(signed_request, signing, model_dir, tiny_split,
                                                                       tiny_manifest, tmp_path, capsys):
    out = signed_request.out_dir
    receipt = json.loads((out / "receipt.json").read_text())
    committed = _committed_files(signed_request, tiny_manifest)
    assert len(committed) == 4

    def failing(checks):
        return {c.name: c.detail for c in checks if c.ok is False}

    edited = json.loads(json.dumps(receipt))
    edited["evaluation"]["after"]["val"]["uar"] += 0.05  # one figure edited
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    bad = failing(verify(tmp_path / "edited.json", public_key=signing[1]))
    assert "changed after signing" in bad["signature"] and "is not" in bad["figures agree"]
    unsigned = {k: v for k, v in edited.items() if k != "signature"}
    (tmp_path / "unsigned.json").write_text(json.dumps(unsigned))
    assert "not signed" in failing(verify(tmp_path / "unsigned.json", public_key=signing[1]))["signature"]
    # without a signature an edit is still caught when the figures are measured again
    checks = verify(tmp_path / "unsigned.json", model=out / "model", forget_files=[str(p) for p in committed],
                    keys=out / "forget-keys.json", split=tiny_split)
    assert "val uar" in failing(checks)["figures, re-evaluated"]

    swapped = failing(verify(out / "receipt.json", model=model_dir))  # the model before, not after
    assert "are not the receipt's model_after" in swapped["model"]

    assert run(["keys", "new", "-o", str(tmp_path / "other")]) == 0
    assert "not by the given key" in failing(verify(out / "receipt.json", public_key=tmp_path / "other" / "signing.pub"))["signature"]

    another = forget(model_dir, tmp_path / "another", speaker="02", n=4, seed=1, method="random-label", params=FAST, **quiet)
    wrong_key = failing(verify(out / "receipt.json", forget_files=[str(p) for p in committed], keys=another.keys_file))
    assert "hold no key for this request" in wrong_key["forget set"]

    wrong_files = [str(p) for p in committed[:3]] + [str(_other_training_file(tiny_manifest, committed))]
    assert "1 committed utterance(s) are not among them, 1 given file(s) are not committed" in \
        failing(verify(out / "receipt.json", forget_files=wrong_files, keys=out / "forget-keys.json"))["forget set"]

    capsys.readouterr()
    code = run(["receipt", "verify", str(tmp_path / "edited.json"), "--public-key", str(signing[1])])
    printed = capsys.readouterr().out
    assert code == 1 and "FAIL  signature: does not match the receipt's contents" in printed and "2 check(s) failed" in printed
    assert all(len(line) < 400 for line in printed.splitlines())


def test_bad_receipts_and_key_files_are_refused_in_one_line(signed_request, signing, model_dir, tiny_split, tmp_path, capsys):
    out = signed_request.out_dir
    receipt = json.loads((out / "receipt.json").read_text())
    cases = {
        "other-format.json": ({**receipt, "format": "something-else"}, "is not a serkit forget receipt"),
        "old.json": ({**receipt, "version": 1}, "version 1 receipts hold unkeyed hashes"),
        "new.json": ({**receipt, "version": 3}, "made by a newer serkit: upgrade serkit"),
        "broken.json": ("{not json", "is not valid JSON"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        capsys.readouterr()
        assert run(["receipt", "verify", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    loose = tmp_path / "loose.json"
    loose.write_bytes(signed_request.keys_file.read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(SerkitError, match=r"can be read by others \(mode 0644\).*chmod 600"):
        verify(out / "receipt.json", forget_files=["x"], keys=loose)
    not_keys = tmp_path / "not-keys.json"
    not_keys.write_text('{"format": "nope"}')
    os.chmod(not_keys, 0o600)
    with pytest.raises(SerkitError, match="is not a serkit request keys file"):
        forget(signed_request.model_dir, tmp_path / "x", speaker="03", n=2, keys=not_keys, split=tiny_split, **quiet)
    os.chmod(signing[0], 0o640)
    try:
        with pytest.raises(SerkitError, match="signing key .* can be read by others"):
            forget(model_dir, tmp_path / "y", speaker="02", n=2, method="random-label", params=FAST,
                   sign_key=signing[0], **quiet)
    finally:
        os.chmod(signing[0], 0o600)
    assert not (tmp_path / "y").exists()
    with pytest.raises(SerkitError, match="is not the receipt's model_before"):
        reproduce(signed_request.model_dir, out / "receipt.json", speaker="02", n=4, **quiet)
    with pytest.raises(SerkitError, match="--chain checks two or more receipts"):
        verify_chain([out / "receipt.json"])


def test_sequential_requests_chain_and_refuse_what_was_already_forgotten(model_dir, tiny_split, tiny_manifest, tmp_path):
    first = forget(model_dir, tmp_path / "r1", speaker="02", n=3, method="random-label", params=FAST, **quiet)
    with pytest.raises(SerkitError, match="keeps its training speakers private .*--split SPLIT.json"):
        forget(first.model_dir, tmp_path / "r2", speaker="03", n=3, method="random-label", params=FAST, **quiet)
    assert not (tmp_path / "r2").exists()
    second = forget(first.model_dir, tmp_path / "r2", speaker="03", n=3, method="random-label", params=FAST,
                    split=tiny_split, **quiet)
    assert second.receipt["chain"]["index"] == 2
    assert second.receipt["model_before"] == {k: v for k, v in first.receipt["model_after"].items() if k != "path"}
    history = load_model(second.model_dir).config["provenance"]["unlearning_history"]
    assert [h["index"] for h in history] == [1, 2] and [h["n"] for h in history] == [3, 3]
    assert _passes(verify_chain([first.out_dir / "receipt.json", second.out_dir / "receipt.json"]))

    # what request 1 forgot is refused by request 3, found by commitment alone
    forgotten_by_first = _committed_files(first, tiny_manifest)
    listed = [str(forgotten_by_first[0]), str(_other_training_file(tiny_manifest, forgotten_by_first))]
    with pytest.raises(SerkitError, match=r"1 of the 2 utterances were already forgotten \(by request 1 .*--skip-forgotten"):
        forget(second.model_dir, tmp_path / "r3", files=listed, split=tiny_split, method="random-label", params=FAST, **quiet)
    messages = []
    third = forget(second.model_dir, tmp_path / "r3", files=listed, split=tiny_split, method="random-label", params=FAST,
                   skip_forgotten=True, log=messages.append)
    assert third.receipt["forget_set"]["n"] == 1 and third.receipt["forget_set"]["skipped_already_forgotten"] == 1
    assert any("skipped, already forgotten by request 1" in m for m in messages)
    # N drawn at random come from what is still to be forgotten: speaker 02 has 12, 3 + 1 are gone
    with pytest.raises(SerkitError, match=r"--n 9 is more than speaker '02' has \(8 training utterances not yet forgotten \(4 were\)\)"):
        forget(third.model_dir, tmp_path / "r4", speaker="02", n=9, split=tiny_split, method="random-label", params=FAST, **quiet)

    r1, r2, r3 = (r.out_dir / "receipt.json" for r in (first, second, third))
    assert _passes(verify_chain([r1, r2, r3]))
    gap = {c.name: c for c in verify_chain([r1, r3])}[f"{r1} -> {r3}"]
    assert gap.ok is False and "1 request(s) missing between them" in gap.detail and "model_before is not" in gap.detail
    assert "out of order" in {c.name: c for c in verify_chain([r2, r1])}[f"{r2} -> {r1}"].detail
    # a model forgotten before, without the keys of its lineage, is refused rather than chained blindly
    (tmp_path / "moved").mkdir()
    os.rename(second.model_dir, tmp_path / "moved" / "model")
    with pytest.raises(SerkitError, match=r"has answered 2 deletion request\(s\) before; give the forget-keys.json"):
        forget(tmp_path / "moved" / "model", tmp_path / "r5", speaker="04", n=2, split=tiny_split, **quiet)
    with pytest.raises(SerkitError, match="request keys .* are not this model's: they cover 1 request"):
        forget(tmp_path / "moved" / "model", tmp_path / "r5", speaker="04", n=2, split=tiny_split, keys=first.keys_file, **quiet)
    assert not (tmp_path / "r5").exists()


def test_reproduce_reruns_a_request_from_its_receipt(model_dir, tmp_path, capsys):
    original = forget(model_dir, tmp_path / "req", speaker="04", n=3, seed=5, method="adv-ewc", params=QUICK, **quiet)
    again = reproduce(model_dir, original.out_dir / "receipt.json", speaker="04", n=3, **quiet)
    assert again.identical and again.lines[0].startswith("OK    model_after") and "(identical)" in again.lines[0]
    with pytest.raises(SerkitError, match="not the one the receipt commits to"):
        reproduce(model_dir, original.out_dir / "receipt.json", speaker="04", n=2, **quiet)
    receipt = json.loads((original.out_dir / "receipt.json").read_text())
    receipt["environment"]["torch"] = "1.0.0"
    (original.out_dir / "receipt.json").write_text(json.dumps(receipt))
    capsys.readouterr()
    code = run(["forget", str(model_dir), "--reproduce", str(original.out_dir / "receipt.json"), "--speaker", "04",
                "--n", "3", "--key", str(original.keys_file)])
    printed = capsys.readouterr().out
    assert "a bit-identical result is not expected" in printed and "torch (1.0.0 there" in printed
    assert code == 0 and "reproduced: identical" in printed
    assert run(["forget", str(model_dir), "--reproduce", str(original.out_dir), "--speaker", "04", "--set", "epochs=3"]) == 2
    capsys.readouterr()
    assert run(["forget", str(model_dir), "--reproduce", str(original.out_dir)]) == 2
    assert "needs the forget set named as the original request named it" in capsys.readouterr().err


def test_a_forget_that_does_not_forget_says_so_and_can_be_refused(model_dir, tmp_path, capsys):
    stubborn = {"epochs": 1, "lr": 1e-12, "target": "misclassify"}
    messages = []
    result = forget(model_dir, tmp_path / "weak", speaker="01", method="random-label", params=stubborn,
                    log=messages.append)
    assert result.receipt["evaluation"]["before"]["forget"]["accuracy"] > 0  # something to forget
    assert result.receipt["outcome"]["target_reached"] is False
    assert any(m.startswith("warning: the forget set is still recognised") for m in messages)
    assert "The target was not reached" in (tmp_path / "weak" / "report.md").read_text()
    capsys.readouterr()
    code = run(["forget", str(model_dir), "-o", str(tmp_path / "strict"), "--speaker", "01", "--method",
                "random-label", "--set", "epochs=1", "--set", "lr=1e-12", "--set", "target=misclassify", "--require-target"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing was written (--require-target)" in err and not (tmp_path / "strict").exists()


def test_two_forgets_into_one_output_do_not_replace_each_other(model_dir, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom serkit.io import OutputDir\n"
        f"with OutputDir({str(out)!r}) as o:\n    o.staging(); print('holding', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(SerkitError, match="another serkit run is writing output .*out right now"):
            forget(model_dir, out, speaker="02", n=2, method="random-label", params=FAST, **quiet)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(SerkitError, match="cannot write output .*: .* is not a writable folder"):
        (tmp_path / "file").write_text("x")
        forget(model_dir, tmp_path / "file" / "out", speaker="02", n=2, **quiet)


def test_sigterm_during_forget_leaves_nothing_and_says_so(model_dir, tmp_path):
    out = tmp_path / "out"
    slow = ["--set", "pgd_steps=50", "--set", "adversarial_per_sample=20", "--set", "epochs=15", "--set", "stop_early=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "serkit.cli", "forget", str(model_dir), "-o", str(out), "--speaker",
                             "02", "--n", "6", "--method", "adv-ewc", *slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.startswith("forgetting"):
            break
    time.sleep(1.5)
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())  # it is working
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM); nothing was written" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_moved_manifest_is_pointed_at_with_an_option_forget_has(model_dir, tmp_path, tiny_manifest):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["provenance"]["manifest"] = str(tmp_path / "gone" / "manifest.csv")
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SerkitError, match=r"is no longer at .*gone/manifest.csv; point serkit at it with --manifest"):
        forget(copy, tmp_path / "out", speaker="02", n=2, **quiet)
    result = forget(copy, tmp_path / "out", speaker="02", n=2, method="random-label", params=FAST,
                    manifest=tiny_manifest, **quiet)
    assert result.receipt["forget_set"]["n"] == 2


@pytest.mark.parametrize("method", ["pgu", "random-label", "neg-grad", "l2ul", "remain", "retrain"])
def test_every_method_leaves_no_trace_of_the_training_speakers_or_files(method, model_dir, tiny_manifest, tmp_path):
    params = {"pgu": FAST, "random-label": FAST, "neg-grad": FAST, "remain": FAST, "retrain": {"max_epochs": 1},
              "l2ul": {**FAST, "adversarial_per_sample": 2, "pgd_steps": 3}}[method]
    result = forget(model_dir, tmp_path / "out", speaker="03", n=3, method=method, params=params,
                    remain=tiny_manifest if method == "remain" else None, **quiet)
    speakers, paths = _training_identifiers(model_dir, tiny_manifest)
    assert find_traces(result.out_dir, identifiers_of(speakers, paths)) == []
    private = ["forget-keys.json"] + (["forget-keys.moments.safetensors"] if method == "pgu" else [])  # head only
    assert sorted(p.name for p in result.out_dir.iterdir()) == [*private, "model", "receipt.json", "report.md"]


def test_a_data_subject_gets_their_own_request_key_alone(model_dir, tiny_split, tiny_manifest, tmp_path):
    first = forget(model_dir, tmp_path / "r1", speaker="02", n=2, method="random-label", params=FAST, **quiet)
    second = forget(first.model_dir, tmp_path / "r2", speaker="04", n=2, method="random-label", params=FAST,
                    split=tiny_split, **quiet)
    lineage = json.loads(second.keys_file.read_text())["requests"]
    assert [r["index"] for r in lineage] == [1, 2]  # the owner's file: every request of the lineage
    assert run(["keys", "extract", str(second.keys_file), "--receipt", str(second.out_dir), "-o",
                str(tmp_path / "subject.json")]) == 0
    theirs = json.loads((tmp_path / "subject.json").read_text())["requests"]
    assert [r["request_id"] for r in theirs] == [second.receipt["request_id"]]
    assert stat.S_IMODE((tmp_path / "subject.json").stat().st_mode) == 0o600
    files = [str(p) for p in _committed_files(second, tiny_manifest)]
    checks = verify(second.out_dir / "receipt.json", forget_files=files, keys=tmp_path / "subject.json")
    assert [c.ok for c in checks if c.name == "forget set"] == [True]
    first_checks = verify(first.out_dir / "receipt.json", forget_files=files, keys=tmp_path / "subject.json")
    assert "hold no key for this request" in next(c.detail for c in first_checks if c.name == "forget set")


def test_a_forgotten_model_is_still_checked_for_seen_speakers_against_its_own_split(signed_request, tiny_split,
                                                                                    tmp_path, capsys):
    model = str(signed_request.model_dir)
    capsys.readouterr()
    assert run(["evaluate", model, "--split", str(tiny_split), "--part", "train", "-o", str(tmp_path / "train")]) == 2
    assert "was trained on speaker(s) 01, 02, 03, 04" in capsys.readouterr().err
    assert run(["evaluate", model, "--split", str(tiny_split), "--part", "test", "-o", str(tmp_path / "test")]) == 0
    assert "cannot check" not in capsys.readouterr().err
    assert "seen_speakers" not in json.loads((tmp_path / "test" / "metrics.json").read_text())


def test_a_receipt_re_signed_by_another_key_is_not_called_ok(signed_request, signing, tiny_split, tmp_path):
    from serkit.unlearning.keys import load_signing_key, sign
    from serkit.unlearning.receipts import canonical_bytes

    out = signed_request.out_dir
    receipt = json.loads((out / "receipt.json").read_text())
    assert run(["keys", "new", "-o", str(tmp_path / "forger")]) == 0
    forged = {k: v for k, v in receipt.items() if k != "signature"}
    forged["evaluation"]["after"]["forget"]["accuracy"] = 0.0
    forged["signature"] = sign(load_signing_key(tmp_path / "forger" / "signing.key"), canonical_bytes(forged))
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    alone = {c.name: c for c in verify(tmp_path / "forged.json")}["signature"]
    assert alone.ok is None and "not checked against a key you trust" in alone.detail
    trusted = {c.name: c for c in verify(tmp_path / "forged.json", public_key=signing[1])}["signature"]
    assert trusted.ok is False and "not by the given key" in trusted.detail
    relabelled = json.loads(json.dumps(forged))
    relabelled["signature"]["key_fingerprint"] = receipt["signature"]["key_fingerprint"]  # claims the owner's key
    (tmp_path / "relabelled.json").write_text(json.dumps(relabelled))
    claim = {c.name: c for c in verify(tmp_path / "relabelled.json")}["signature"]
    assert claim.ok is False and "was edited" in claim.detail
    # a chain whose receipts are signed by two keys is not one owner's chain
    second = forget(signed_request.model_dir, tmp_path / "next", speaker="03", n=2, method="random-label", params=FAST,
                    split=tiny_split, sign_key=tmp_path / "forger" / "signing.key", **quiet)
    links = {c.name: c for c in verify_chain([out / "receipt.json", second.out_dir / "receipt.json"])}
    assert links["one signer"].ok is False and "2 different keys" in links["one signer"].detail


def test_a_model_whose_config_was_changed_is_not_the_receipts(signed_request, tiny_split, tiny_manifest, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(signed_request.model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["labels"][0], config["labels"][1] = config["labels"][1], config["labels"][0]  # every prediction changes
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    check = {c.name: c for c in verify(signed_request.out_dir / "receipt.json", model=copy)}["model"]
    assert check.ok is False and "config.json differ" in check.detail
    # re-evaluation checks the model it measures, the one beside the receipt by default
    files = [str(p) for p in _committed_files(signed_request, tiny_manifest)]
    beside = {c.name: c for c in verify(signed_request.out_dir / "receipt.json", forget_files=files,
                                        keys=signed_request.keys_file, split=tiny_split)}
    assert beside["model"].ok is True and beside["figures, re-evaluated"].ok is True


def test_overwrite_never_destroys_a_requests_keys_and_a_later_keys_file_serves_an_earlier_model(
        model_dir, tiny_split, tmp_path):
    first = forget(model_dir, tmp_path / "r1", speaker="02", n=2, method="random-label", params=FAST, **quiet)
    with pytest.raises(SerkitError, match="holds forget-keys.json, private to the model's owner .*the only key to its "
                                          "request's commitments.*move forget-keys.json and any"):
        forget(model_dir, tmp_path / "r1", speaker="02", n=2, method="random-label", params=FAST, overwrite=True, **quiet)
    projected = forget(model_dir, tmp_path / "p1", speaker="02", n=2, method="pgu", params=FAST, **quiet)
    projected.keys_file.rename(tmp_path / "p1-keys.json")  # the moments stay behind: as private, as guarded
    with pytest.raises(SerkitError, match="holds forget-keys.moments.safetensors, private to the model's owner"):
        forget(model_dir, tmp_path / "p1", speaker="02", n=2, method="pgu", params=FAST, overwrite=True, **quiet)
    with pytest.raises(SerkitError, match="--key-out .* lies inside the output"):
        forget(model_dir, tmp_path / "r9", speaker="02", n=2, keys_out=tmp_path / "r9" / "k.json", **quiet)
    second = forget(first.model_dir, tmp_path / "r2", speaker="03", n=2, method="random-label", params=FAST,
                    split=tiny_split, **quiet)
    # a branch from the first model, given the second request's keys (which hold the first's too)
    branch = forget(first.model_dir, tmp_path / "branch", speaker="04", n=2, method="random-label", params=FAST,
                    split=tiny_split, keys=second.keys_file, **quiet)
    assert branch.receipt["chain"]["index"] == 2
    assert branch.receipt["chain"]["previous_receipt_sha256"] == second.receipt["chain"]["previous_receipt_sha256"]


def test_a_whole_speaker_request_does_not_show_it_by_a_missing_figure(model_dir, tmp_path):
    whole = forget(model_dir, tmp_path / "whole", speaker="02", method="random-label", params=FAST, **quiet)
    part = forget(model_dir, tmp_path / "part", speaker="03", n=5, method="random-label", params=FAST, **quiet)
    for result in (whole, part):
        other = result.receipt["evaluation"]["after"]["speaker_other_training"]
        assert set(other) == {"accuracy"}  # never the count of the speaker's other utterances
    assert whole.receipt["evaluation"]["after"]["speaker_other_training"]["accuracy"] is None
    accuracy = part.receipt["evaluation"]["after"]["speaker_other_training"]["accuracy"]
    assert accuracy == round(accuracy, 2)


def test_reproduce_a_request_that_was_compared_with_a_retrained_model(model_dir, tmp_path):
    reference = forget(model_dir, tmp_path / "ref", speaker="04", n=2, method="retrain", params={"max_epochs": 1}, **quiet)
    compared = forget(model_dir, tmp_path / "cmp", speaker="04", n=2, method="random-label", params=FAST,
                      retrained=reference.model_dir, **quiet)
    assert "vs_retrained" in compared.receipt["evaluation"]["after"]
    again = reproduce(model_dir, compared.out_dir / "receipt.json", speaker="04", n=2, **quiet)
    assert again.identical
