"""`kubermesh build --site` and `site check` refuse a bad site file in one sentence
naming the file (and field), before anything is checked or built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from firstboot.files import write_atomic
from image import tree
from kubermesh import cli
from mesh import site as sitefile


@pytest.fixture(autouse=True)
def nothing_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build's first step after the site and root checks fails the test if reached."""

    def reached() -> None:
        pytest.fail("the build went past the site check")

    monkeypatch.setattr(tree.Sources, "find", reached)


def _build(tmp_path: Path, site: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = tmp_path / "out"
    assert cli.main(["build", "--site", str(site), "--output", str(out)]) == 1
    assert not out.exists() and not (tmp_path / "out.build.log").exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _site(tmp_path: Path, text: str | None = None, mode: int = 0o600) -> Path:
    path = tmp_path / "site.toml"
    write_atomic(path, sitefile.new_site_toml("t") if text is None else text, mode)
    return path


def test_missing_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "missing.toml"
    err = _build(tmp_path, site, capsys)
    assert err == f"kubermesh: {site}: cannot read the file (No such file or directory)\n"


def test_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = _site(tmp_path, 'name = "x"\n[mesh\n')
    err = _build(tmp_path, site, capsys)
    assert err.startswith(f"kubermesh: {site}: not valid TOML (") and err.count("\n") == 1


def test_invalid_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = sitefile.new_site_toml("t").replace('range = "10.96.0.0/12"',
                                               'range = "10.244.0.0/16"')
    site = _site(tmp_path, text)
    err = _build(tmp_path, site, capsys)
    assert err.startswith(f"kubermesh: {site}: services.range: ") and "overlaps" in err


def test_site_open_to_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = _site(tmp_path, mode=0o644)
    err = _build(tmp_path, site, capsys)
    assert err == (f"kubermesh: {site} is open to other users (mode 0644); it holds the "
                   f"site's secrets\n  hint: chmod 600 {site}\n")
    assert cli.main(["site", "check", str(site)]) == 1
    assert f"hint: chmod 600 {site}" in capsys.readouterr().err


def test_a_good_site_goes_on_to_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(pytest.fail.Exception, match="went past the site check"):
        cli.main(["build", "--site", str(_site(tmp_path)), "--output", str(tmp_path / "out")])
    assert cli.main(["site", "check", str(_site(tmp_path))]) == 0
