"""Trust, third pass (issue 18): proofs that say what they checked, files that lie read back
with an error naming them, and text that cannot fool a terminal (against the stand-in Hub and
hand-made files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import HfEnv, Run, TinyCheckpoints
from hub_server import StandInHub
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_tokenizer import write_tokenizer

import pythia_tl
from pythia_tl.errors import OutputFileError, SourceError
from pythia_tl.export import export_hf_folder
from pythia_tl.output.metadata import read_output
from pythia_tl.text import printable

REPO = "EleutherAI/pythia-70m"


def converted(cli: Run, source: str, out: Path, *extra: str) -> Path:
    status, _, err = cli(["convert", source, "-o", str(out), "--quiet", *extra])
    assert status == 0, err
    return out


def checks_of(stdout: str) -> dict[str, dict]:
    return {check["name"]: check for check in json.loads(stdout)["checks"]}


def rewrite_metadata(path: Path, **changes: str) -> None:
    with safe_open(path, framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata())
    save_file(tensors, path, metadata={**metadata, **changes})


# --- 3. proofs say what they checked -----------------------------------------------------------


def test_verify_of_a_streamed_file_offline_is_a_skip_naming_what_makes_it_possible(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    cli: Run,
    tmp_path: Path,
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    out = converted(cli, REPO, tmp_path / "out.safetensors")
    hf_env.set_offline(True)
    status, stdout, stderr = cli(["verify", str(out), "--json"])
    source = checks_of(stdout)["source"]
    assert (status, source["status"]) == (0, "skipped"), (stdout, stderr)
    assert "offline mode is on" in source["detail"]
    assert f"pythia-tl verify {out} FOLDER" in source["detail"]
    assert "Hub reachable" in source["detail"]
    # The table says skip, not FAIL.
    status, stdout, _ = cli(["verify", str(out)])
    assert status == 0 and "failed" not in stdout
    assert any(line.split()[:2] == ["skipped", "source"] for line in stdout.splitlines()), stdout


def test_verify_logits_of_a_streamed_file_downloads_the_source_and_runs(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub, cli: Run, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    out = converted(cli, REPO, tmp_path / "out.safetensors")  # streamed: nothing cached
    status, stdout, stderr = cli(["verify", str(out), "--logits", "--json"])
    assert (status, stderr) == (0, ""), stderr
    checks = checks_of(stdout)
    assert checks["logits"]["status"] == "ok", checks["logits"]
    assert checks["source"]["source_sha256"] == "computed"


def test_verify_logits_offline_of_a_streamed_file_is_skipped_with_the_reason(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    hf_env: HfEnv,
    cli: Run,
    tmp_path: Path,
) -> None:
    pytest.importorskip("transformers")
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    out = converted(cli, REPO, tmp_path / "out.safetensors")
    hf_env.set_offline(True)
    status, stdout, stderr = cli(["verify", str(out), "--logits", "--json"])
    checks = checks_of(stdout)
    assert status == 0, stderr
    assert checks["logits"]["status"] == "skipped"
    assert "cannot read the source here" in checks["logits"]["detail"]


def test_a_partial_hub_conversion_records_announced_sha256_and_verify_says_so(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub, cli: Run, tmp_path: Path
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    partial = converted(cli, REPO, tmp_path / "partial.safetensors", "--layers", "0")
    whole = converted(cli, REPO, tmp_path / "whole.safetensors")
    assert read_output(partial).metadata["source_sha256"] == "announced"
    assert read_output(whole).metadata["source_sha256"] == "computed"
    status, stdout, stderr = cli(["verify", str(partial)])
    assert status == 0, stderr
    assert "have the recorded sha256" not in stdout
    assert "were not hashed" in stdout and "the Hub announces the recorded sha256" in stdout
    status, stdout, _ = cli(["verify", str(whole)])
    assert status == 0 and "hashed now, have the recorded sha256" in stdout


def test_a_local_partial_conversion_records_computed_sha256(
    tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    out = converted(
        cli, str(tiny_checkpoints["safetensors"]), tmp_path / "p.safetensors", "--layers", "0"
    )
    assert read_output(out).metadata["source_sha256"] == "computed"


def test_a_lying_sha256_origin_is_refused(
    tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    out = converted(cli, str(tiny_checkpoints["safetensors"]), tmp_path / "x.safetensors")
    rewrite_metadata(out, source_sha256="trust me")
    status, stdout, _ = cli(["verify", str(out)])
    assert status != 0 and "metadata source_sha256 is 'trust me'" in stdout


# --- 4. files read back are checked first ----------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("d_model", 4096), ("d_vocab", 50304), ("n_layers", 32), ("d_mlp", 16384)],
)
def test_sizes_that_disagree_with_the_tensors_are_refused_before_load_or_export_allocates(
    field: str, value: int, tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    out = converted(cli, str(tiny_checkpoints["safetensors"]), tmp_path / "x.safetensors")
    with safe_open(out, framework="pt") as handle:
        cfg = json.loads(handle.metadata()["tl_config"])
    cfg[field] = value
    if field == "d_model":
        cfg["d_head"] = value // cfg["n_heads"]
        cfg["d_mlp"] = 4 * value
    rewrite_metadata(out, tl_config=json.dumps(cfg))
    for action in (lambda: pythia_tl.load(out), lambda: export_hf_folder(out, tmp_path / "hf")):
        with pytest.raises(OutputFileError) as refused:
            action()
        message = str(refused.value)
        assert message.startswith(f"{out}: "), message
        assert "tl_config" in message
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"folder": "relative/tok", "files": []}, "tokenizer folder"),
        ({"folder": 7, "files": []}, "tokenizer folder"),
        ({"repo_id": "../../etc", "revision": "0" * 40, "files": []}, "tokenizer repo_id"),
        ({"repo_id": "a/b", "revision": "../main", "files": []}, "tokenizer revision"),
        ({"repo_id": "a/b", "revision": "0" * 40, "files": ["../x.json"]}, "tokenizer files"),
        ({"repo_id": ["a/b"], "revision": None}, "tokenizer repo_id"),
    ],
)
def test_a_tokenizer_record_that_names_a_path_or_a_non_string_is_refused(
    record: dict, fragment: str, tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    out = converted(cli, str(tiny_checkpoints["safetensors"]), tmp_path / "x.safetensors")
    rewrite_metadata(out, tokenizer=json.dumps(record))
    with pytest.raises(OutputFileError, match=fragment) as refused:
        export_hf_folder(out, tmp_path / "hf")
    assert str(refused.value).startswith(f"{out}: ")
    with pytest.raises(OutputFileError, match=fragment):
        pythia_tl.load(out)
    status, _, stderr = cli(["export", str(out), "-o", str(tmp_path / "hf")])
    assert status == 1 and fragment in stderr and "unexpected" not in stderr


@pytest.mark.parametrize(
    "content",
    [
        '{"model": {}}',
        "[" * 100_000 + "]" * 100_000,
        '{"model": {"type": "BPE"}, "added_tokens": 5}',
    ],
)
def test_a_malformed_tokenizer_json_is_one_clear_error(
    content: str, tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    pytest.importorskip("transformers")
    folder = tmp_path / "source"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    write_tokenizer(folder, tiny_checkpoints.shape.d_vocab)
    out = converted(cli, str(folder), tmp_path / "x.safetensors")
    (folder / "tokenizer.json").write_text(content)
    try:
        pythia_tl.load(out)
    except SourceError as exc:
        assert str(exc).startswith(f"{folder}: its tokenizer files cannot be read")
    except Exception as exc:  # pragma: no cover - the failure this test is for
        pytest.fail(f"escaped as {type(exc).__name__}: {exc}")


# --- 7. printable text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "escape"),
    [
        ("\u202e", "\\u202e"),
        ("\u202a", "\\u202a"),
        ("\u2066", "\\u2066"),
        ("\u2067", "\\u2067"),
        ("\u2068", "\\u2068"),
        ("\u2069", "\\u2069"),
        ("\u200b", "\\u200b"),
        ("\u200d", "\\u200d"),
        ("\u200f", "\\u200f"),
        ("\ufeff", "\\ufeff"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\U000e0041", "\\U000e0041"),
        ("\x1b", "\\x1b"),
        ("\n", "\\n"),
    ],
)
def test_invisible_and_reordering_characters_are_escaped(char: str, escape: str) -> None:
    assert printable(f"embed{char}.W_E") == f"embed{escape}.W_E"


def test_ordinary_text_is_left_alone() -> None:
    text = "blocks.0.attn.W_Q é 日本 Ω — ✓"
    assert printable(text) == text


def test_a_bidi_tensor_name_reaches_no_table_or_error_raw(
    tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    out = converted(cli, str(tiny_checkpoints["safetensors"]), tmp_path / "x.safetensors")
    with safe_open(out, framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata())
    tensors["evil\u202egnp.exe\u2028forged"] = tensors["embed.W_E"][:1].clone()
    save_file(tensors, out, metadata=metadata)
    for args in (
        ["inspect", str(out)],
        ["verify", str(out)],
        ["export", str(out), "-o", str(tmp_path / "hf")],
    ):
        _, stdout, stderr = cli(args)
        for stream in (stdout, stderr):
            assert "\u202e" not in stream and "\u2028" not in stream, args
        assert "\\u202e" in stdout + stderr, args


def test_an_output_that_is_a_directory_is_refused_without_naming_a_flag(
    tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    from pythia_tl.errors import OutputError
    from pythia_tl.output.atomic import check_replaceable

    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError) as refused:
        check_replaceable(tmp_path / "d")
    assert "--force" not in str(refused.value) and "overwrite" not in str(refused.value)


# --- 1. every Hub answer bounded before it is held ------------------------------------------


def test_a_config_json_listed_larger_than_its_cap_is_refused_before_download(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub, cli: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "huge-config"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config) + " " * (2 << 20))
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.clear_requests()
    status, _, stderr = cli(["convert", REPO, "-o", str(tmp_path / "x.safetensors")])
    assert status == 1, stderr
    assert "the Hub lists config.json at" in stderr and "not downloaded" in stderr
    assert stderr.count("\n") == 1
    assert "config.json" not in stand_in_hub.downloaded_paths()


def test_a_tokenizer_file_listed_larger_than_its_cap_is_refused_before_download(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pythia_tl.hub.revision as revision

    folder = tmp_path / "with-tokenizer"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    write_tokenizer(folder, tiny_checkpoints.shape.d_vocab)
    size = (folder / "tokenizer.json").stat().st_size
    monkeypatch.setattr(revision, "MAX_TOKENIZER_FILE_BYTES", size - 1)
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.clear_requests()
    status, _, stderr = cli(["convert", REPO, "-o", str(tmp_path / "x.safetensors")])
    assert status == 1, stderr
    assert f"the Hub lists tokenizer.json at {size} bytes" in stderr
    assert "tokenizer.json" not in stand_in_hub.downloaded_paths()


@pytest.mark.parametrize(
    ("status", "retry_after", "said"),
    [
        (503, "1000000", "answered HTTP 503"),
        (429, "999999", "is rate-limiting requests"),
        (502, "400", "answered HTTP 502"),
        (408, "1000", "answered HTTP 408"),
    ],
)
def test_a_huge_retry_after_is_capped_and_said(
    status: int,
    retry_after: str,
    said: str,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
) -> None:
    from pythia_tl.errors import RateLimited
    from pythia_tl.hub.remote import RemoteFile
    from pythia_tl.hub.transport import MAX_RETRY_AFTER

    folder = tiny_checkpoints["safetensors"]
    stand_in_hub.add_revision(REPO, "main", folder)
    commit = stand_in_hub.commit_of(REPO, "main")
    size = (folder / "model.safetensors").stat().st_size
    stand_in_hub.break_file(
        REPO, "model.safetensors", kind="status", status=status, times=2, retry_after=retry_after
    )
    slept: list[float] = []
    file = RemoteFile(REPO, commit, "model.safetensors", size, sleep=slept.append)
    with pytest.warns(RateLimited) as notes:
        file.resolver.location()
    assert slept == [MAX_RETRY_AFTER, MAX_RETRY_AFTER]
    assert len(notes) == 1
    message = str(notes[0].message)
    assert said in message and f"waiting {MAX_RETRY_AFTER:.0f} s" in message
    assert "capped at" in message


def test_a_retry_after_within_the_cap_is_obeyed_as_asked(
    tiny_checkpoints: TinyCheckpoints, stand_in_hub: StandInHub
) -> None:
    from pythia_tl.hub.remote import RemoteFile

    folder = tiny_checkpoints["safetensors"]
    stand_in_hub.add_revision(REPO, "main", folder)
    size = (folder / "model.safetensors").stat().st_size
    stand_in_hub.break_file(
        REPO, "model.safetensors", kind="status", status=503, times=1, retry_after="7"
    )
    slept: list[float] = []
    file = RemoteFile(
        REPO, stand_in_hub.commit_of(REPO, "main"), "model.safetensors", size, sleep=slept.append
    )
    with pytest.warns(Warning, match="waiting 7 s before asking again$"):
        file.resolver.location()
    assert slept == [7.0]


@pytest.mark.parametrize(
    ("path", "fault"),
    [
        # huggingface_hub's GET sleeps out a 429's Retry-After, uncapped.
        ("config.json", {"kind": "status", "status": 429, "retry_after": "100000"}),
        ("config.json", {"kind": "status", "status": 408, "retry_after": "100000"}),
        ("tokenizer.json", {"kind": "status", "status": 429, "retry_after": "100000"}),
        # Ten bytes a second: each of its reads arrives well within its timeout.
        ("config.json", {"kind": "drip", "offset": 10}),
        ("tokenizer.json", {"kind": "drip", "offset": 10}),
    ],
)
def test_huggingface_hubs_own_download_of_a_small_file_ends_at_its_deadline(
    path: str,
    fault: dict,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import pythia_tl.hub.deadline as deadline

    monkeypatch.setattr(deadline, "DOWNLOAD_GRACE", 3.0)
    monkeypatch.setattr(deadline, "SAY_AFTER", 1.0)
    folder = tmp_path / "with-tokenizer"
    shutil.copytree(tiny_checkpoints["safetensors"], folder)
    write_tokenizer(folder, tiny_checkpoints.shape.d_vocab)
    stand_in_hub.add_revision(REPO, "main", folder)
    broken = stand_in_hub.break_file(REPO, path, method="GET", **fault)
    out = tmp_path / "x.safetensors"
    started = time.monotonic()
    status, _, stderr = cli(["convert", REPO, "-o", str(out)])
    assert time.monotonic() - started < 30
    assert status == 1, stderr
    assert broken.fired >= 1  # huggingface_hub met the fault
    assert len(stderr.splitlines()) == 2, stderr
    note, error = stderr.splitlines()
    assert note == (
        f"note: {REPO}@main: {path}: nothing from the Hub after 1 s (it is rate-limiting, or "
        "sending slowly); giving up after 3 s"
    )
    assert error.startswith(f"error: {REPO}@main: {path}: not downloaded within 3 s"), error
    assert not out.exists() and list(tmp_path.glob(".x.safetensors*")) == []


def test_a_deadline_passes_on_the_calls_result_or_its_own_exception() -> None:
    import threading

    from pythia_tl.hub.deadline import within_deadline

    assert within_deadline(lambda: 7, 5.0, "a file") == 7
    with pytest.raises(KeyError, match="raised"):
        within_deadline(lambda: {}["raised"], 5.0, "a file")
    never = threading.Event()
    with pytest.raises(SourceError, match=r"^a file: not downloaded within 0 s"):
        within_deadline(never.wait, 0.2, "a file")
    never.set()


def test_audit_refuses_an_index_announced_larger_than_an_index_may_be(
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pythia_tl.hub.revision as revision

    folder = tiny_checkpoints["safetensors-sharded"]
    index = "model.safetensors.index.json"
    monkeypatch.setattr(revision, "MAX_INDEX_BYTES", (folder / index).stat().st_size - 1)
    stand_in_hub.add_revision(REPO, "step0", folder)
    stand_in_hub.add_revision(REPO, "main", folder)
    stand_in_hub.clear_requests()
    status, out, stderr = cli(["audit", "pythia-70m", "--steps", "0", "--json"])
    assert f"the Hub lists {index} at" in stderr + out, (status, out, stderr)
    assert index not in stand_in_hub.downloaded_paths()


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
@pytest.mark.parametrize(
    ("path", "status"), [("config.json", 503), ("config.json", 429), ("model.safetensors", 500)]
)
def test_huggingface_hubs_retry_warnings_never_reach_stderr(
    quiet: list[str],
    path: str,
    status: int,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    run_cli,
    tmp_path: Path,
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    fault = stand_in_hub.break_file(REPO, path, kind="status", status=status, times=1)
    result = run_cli(["convert", REPO, "-o", str(tmp_path / "x.safetensors"), *quiet], timeout=120)
    assert result.returncode == 0, result.stderr
    assert fault.fired == 1  # the failure was met, and retried
    lines = result.stderr.splitlines()
    assert all(line.startswith(("wrote ", "note: ")) for line in lines), lines
    assert len(lines) <= (0 if quiet else 1) + 1


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[" * 200_000 + b"]" * 200_000,
        b'{"siblings": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        b"[1, 2, 3]",
        b'{"id": "EleutherAI/pythia-70m", "sha": 5, "siblings": "none"}',
        b'{"id": "EleutherAI/pythia-70m", "sha": "' + b"a" * 40 + b'", "siblings": [{"x": 1}]}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_a_malformed_or_deeply_nested_listing_is_one_clear_line(
    body: bytes,
    tiny_checkpoints: TinyCheckpoints,
    stand_in_hub: StandInHub,
    cli: Run,
    tmp_path: Path,
) -> None:
    stand_in_hub.add_revision(REPO, "main", tiny_checkpoints["safetensors"])
    stand_in_hub.set_api_body(body)
    status, _, stderr = cli(["convert", REPO, "-o", str(tmp_path / "x.safetensors")])
    assert status == 1, stderr
    assert stderr.count("\n") == 1 and "unexpected" not in stderr, stderr
    assert stderr.startswith(f"error: {REPO}"), stderr
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("change", ["dtype", "shape", "extra", "missing"])
def test_tensors_that_disagree_with_the_metadata_are_refused_naming_the_file(
    change: str, tiny_checkpoints: TinyCheckpoints, cli: Run, tmp_path: Path
) -> None:
    import torch

    out = converted(cli, str(tiny_checkpoints["safetensors"]), tmp_path / "x.safetensors")
    with safe_open(out, framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata())
    if change == "dtype":
        tensors["embed.W_E"] = tensors["embed.W_E"].to(torch.float32)
    elif change == "shape":
        tensors["embed.W_E"] = tensors["embed.W_E"][:-1].clone()
    elif change == "extra":
        tensors["blocks.9.attn.W_Q"] = tensors["blocks.0.attn.W_Q"].clone()
    else:
        del tensors["blocks.1.mlp.W_in"]
    save_file(tensors, out, metadata=metadata)
    status, _, stderr = cli(["export", str(out), "-o", str(tmp_path / "hf")])
    assert status == 1 and stderr.startswith(f"error: {out}: tensor "), stderr
    assert stderr.count("\n") == 1 and "unexpected" not in stderr
    assert not (tmp_path / "hf").exists()
    with pytest.raises(OutputFileError, match=f"^{out}: tensor "):
        pythia_tl.load(out)
