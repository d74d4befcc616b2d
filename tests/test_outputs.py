"""vaelens.outputs: nothing overwritten without force, never an input, atomic, suffix matches the format."""

from __future__ import annotations

import os

import pytest

from vaelens.errors import VaeLensError
from vaelens.outputs import OutputError, OutputExistsError, atomic_write, check_output, prepare_outputs


def test_existing_path_needs_force(tmp_path):
    p = tmp_path / "z.safetensors"
    p.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(p, kind="latent")
    assert check_output(p, kind="latent", force=True) == p
    assert p.read_bytes() == b"old"  # checking writes nothing


def test_an_input_is_never_an_output_even_with_force(tmp_path):
    src = tmp_path / "victim.png"
    src.write_bytes(b"photo")
    with pytest.raises(OutputError, match="one of the inputs"):
        check_output(tmp_path / "." / "victim.png", inputs=[src], force=True)
    link = tmp_path / "hard.png"
    os.link(src, link)  # the same file under another name
    with pytest.raises(OutputError, match="one of the inputs"):
        check_output(link, inputs=[src], force=True)


@pytest.mark.parametrize(
    ("name", "kind", "ok"),
    [("out.png", "latent", False), ("out.safetensors", "latent", True), ("out", "latent", False),
     ("x.latent", "comfy", True), ("x.png", "image", True), ("x.safetensors", "image", False)],
)
def test_suffix_must_match_the_format(tmp_path, name, kind, ok):
    if ok:
        check_output(tmp_path / name, kind=kind)
    else:
        with pytest.raises(OutputError, match="must end in"):
            check_output(tmp_path / name, kind=kind)


def test_unwritable_places_are_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "x.safetensors")
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path)
    if os.path.isdir("/proc/self"):
        with pytest.raises(OutputError, match="cannot be written"):
            check_output("/proc/x.safetensors")


def test_the_same_output_twice_is_refused(tmp_path):
    with pytest.raises(OutputError, match="twice"):
        prepare_outputs([tmp_path / "a.png", tmp_path / "sub" / ".." / "a.png"])


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    p = tmp_path / "z.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert p.read_bytes() == b"old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["z.bin"]  # no temporary file left behind
    with atomic_write(p) as tmp:
        assert tmp.parent == p.parent and tmp.suffix == ".bin"
        tmp.write_bytes(b"new")
    assert p.read_bytes() == b"new"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_issue20_11_atomic_write_honours_the_umask(tmp_path, umask):
    """safetensors' save_file creates its file 0600; the published file has 0666 less the umask, like open()."""
    import torch
    from safetensors.torch import save_file

    from vaelens.outputs import staged_prefix

    old = os.umask(umask)
    try:
        target = tmp_path / "z.safetensors"
        with atomic_write(target) as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
            assert os.stat(tmp).st_mode & 0o777 == 0o600  # what the writer left
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        with staged_prefix(tmp_path / "pre") as staged:
            save_file({"a": torch.zeros(2)}, str(staged) + "_x.safetensors")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert os.stat(plain).st_mode & 0o777 == expected
    assert os.stat(target).st_mode & 0o777 == expected
    assert os.stat(tmp_path / "pre_x.safetensors").st_mode & 0o777 == expected


@pytest.mark.parametrize(("name", "kind", "phrase"), [
    ("r.txt", "html", "is an HTML file"), ("x.txt", "image", "is an image file"),
    ("x.png", "latent", "is a latent file"), ("x.png", "json", "is a json file"),
])
def test_kind_is_an_enum_and_the_message_reads(tmp_path, name, kind, phrase):
    from vaelens.outputs import OutputKind

    for given in (kind, OutputKind(kind)):
        with pytest.raises(OutputError, match=phrase) as exc:
            check_output(tmp_path / name, kind=given)
        assert exc.value.choices and all(c.startswith(".") for c in exc.value.choices)
    with pytest.raises(VaeLensError, match="kind 'pdf' is not supported; choose one of: image, figure"):
        check_output(tmp_path / "x.pdf", kind="pdf")
