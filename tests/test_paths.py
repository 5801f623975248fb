"""Containment of dataset paths (vdreid.data.paths) and the strict split/index readers (vdreid.data.splitfiles)."""

from __future__ import annotations

import codecs
import logging
import os

import pytest
from vdreid.data.paths import inside_root, list_inside
from vdreid.data.splitfiles import parse_decimal, read_id_list, read_idx_file, read_text_lines
from vdreid.errors import DatasetLayoutError, SplitFileError


@pytest.fixture()
def tree(tmp_path):
    """tmp/ds (the dataset folder) with ds/a/1.bmp, ds/a/2.bmp, and tmp/outside/x.bmp beside it."""
    ds, out = tmp_path / "ds", tmp_path / "outside"
    (ds / "a").mkdir(parents=True)
    out.mkdir()
    for p in (ds / "a" / "1.bmp", ds / "a" / "2.bmp", out / "x.bmp"):
        p.write_bytes(b"img")
    return tmp_path


# ------------------------------------------------------------------------------------------------ inside_root
def test_inside_root_accepts_relative_paths_inside(tree):
    ds = str(tree / "ds")
    assert inside_root("a/1.bmp", ds) == os.path.join(ds, "a", "1.bmp")
    assert inside_root("a/../a/./2.bmp", ds) == os.path.join(ds, "a", "2.bmp")  # '..' that stays inside is fine
    assert inside_root("a/missing.bmp", ds) == os.path.join(ds, "a", "missing.bmp")  # existence is the caller's


@pytest.mark.parametrize("path", ["../outside/x.bmp", "a/../../outside/x.bmp", "../../../../etc/passwd", ".."])
def test_inside_root_refuses_dotdot_leaving_the_root(tree, path):
    with pytest.raises(SplitFileError, match=r"idx\.txt:7: path .* leaves the dataset folder"):
        inside_root(path, str(tree / "ds"), source="idx.txt", lineno=7)


def test_inside_root_refuses_absolute_paths(tree):
    absolute = str(tree / "ds" / "a" / "1.bmp")  # even one that points inside: the format is relative
    with pytest.raises(SplitFileError, match=r"idx\.txt:2: absolute path"):
        inside_root(absolute, str(tree / "ds"), source="idx.txt", lineno=2)


def test_inside_root_symlinks(tree):
    ds = tree / "ds"
    os.symlink(tree / "outside" / "x.bmp", ds / "a" / "evil.bmp")
    os.symlink(tree / "outside", ds / "b")
    os.symlink("1.bmp", ds / "a" / "alias.bmp")  # stays inside: kept, and named as written
    for path in ("a/evil.bmp", "b/x.bmp"):
        with pytest.raises(DatasetLayoutError, match=r"f\.txt:3: path .* resolves to .*outside.* outside the dataset"):
            inside_root(path, str(ds), source="f.txt", lineno=3)
    assert inside_root("a/alias.bmp", str(ds)) == os.path.join(str(ds), "a", "alias.bmp")
    # a dataset folder that is itself a link (datasets/RegDB -> /mnt/big/RegDB) works
    os.symlink(ds, tree / "ds_link")
    assert inside_root("a/1.bmp", str(tree / "ds_link")) == os.path.join(str(tree / "ds_link"), "a", "1.bmp")
    with pytest.raises(DatasetLayoutError, match="outside"):
        inside_root("a/evil.bmp", str(tree / "ds_link"))


def test_inside_root_symlink_loop_names_the_path(tree):
    ds = tree / "ds"
    os.symlink(ds / "loop2", ds / "loop1")
    os.symlink(ds / "loop1", ds / "loop2")
    with pytest.raises(DatasetLayoutError, match=r"x\.txt:1: .*loop1.*symbolic-link loop"):
        inside_root("loop1/1.bmp", str(ds), source="x.txt", lineno=1)


# ------------------------------------------------------------------------------------------------ list_inside
def test_list_inside(tree):
    ds = tree / "ds"
    assert list_inside(str(ds / "a"), str(ds)) == [str(ds / "a" / "1.bmp"), str(ds / "a" / "2.bmp")]
    assert list_inside(str(ds / "nope"), str(ds)) is None
    os.symlink("a", ds / "a_link")  # a folder link inside the root lists like the folder
    assert [os.path.basename(p) for p in list_inside(str(ds / "a_link"), str(ds))] == ["1.bmp", "2.bmp"]
    os.symlink("2.bmp", ds / "a" / "3.bmp")  # entry links inside the root are listed, unfiltered
    assert [os.path.basename(p) for p in list_inside(str(ds / "a"), str(ds))] == ["1.bmp", "2.bmp", "3.bmp"]


def test_list_inside_refuses_loops_escapes_and_dangling_folders(tree):
    ds = tree / "ds"
    os.symlink(ds / "l1", ds / "l2")
    os.symlink(ds / "l2", ds / "l1")
    with pytest.raises(DatasetLayoutError, match=r"l1.*symbolic-link loop"):
        list_inside(str(ds / "l1"), str(ds))
    os.symlink(tree / "outside", ds / "out")
    with pytest.raises(DatasetLayoutError, match=r"folder .*out.* resolves to .*outside"):
        list_inside(str(ds / "out"), str(ds))
    os.symlink(ds / "gone", ds / "dangling")
    with pytest.raises(DatasetLayoutError, match=r"dangling.* symbolic link to a missing target"):
        list_inside(str(ds / "dangling"), str(ds))
    (ds / "plainfile").write_text("x")
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        list_inside(str(ds / "plainfile"), str(ds))
    os.symlink(tree / "outside" / "x.bmp", ds / "a" / "0.bmp")
    with pytest.raises(DatasetLayoutError, match=r"0\.bmp.* resolves to .*outside"):
        list_inside(str(ds / "a"), str(ds))


# ------------------------------------------------------------------------------------------------ text decoding
def test_read_text_lines_bom_utf16_crlf_and_form_feed(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(codecs.BOM_UTF8 + b"1,2\r\n3\x0c4\n\n")
    assert read_text_lines(str(p)) == ["1,2", "3\x0c4", ""]  # split on \n only: line numbers match editors
    p.write_bytes(codecs.BOM_UTF16_LE + "a b\r\nc".encode("utf-16-le"))
    assert read_text_lines(str(p)) == ["a b", "c"]
    p.write_bytes(b"")
    assert read_text_lines(str(p)) == []


def test_read_text_lines_names_line_and_byte_of_bad_encoding(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"ok\nfine\nbad \xff here\n")
    with pytest.raises(SplitFileError, match=r"f\.txt:3: byte 0xff at column 5 is not valid UTF-8"):
        read_text_lines(str(p), "split file")
    p.write_bytes(b"caf\xe9\n")  # latin-1
    with pytest.raises(SplitFileError, match=r"f\.txt:1: byte 0xe9 at column 4"):
        read_text_lines(str(p))


def test_parse_decimal_is_strict():
    assert [parse_decimal(t) for t in ("0", "007", "14", "-3")] == [0, 7, 14, -3]
    # int() reads all of these, some with another meaning (1_4 -> 14, Arabic-Indic 3 -> 3)
    for tok in ("1_4", "+5", " 5", "5 ", "\u0663", "1e3", "0x10", "", "-", "1.0"):
        assert parse_decimal(tok) is None, tok


# ------------------------------------------------------------------------------------------------ id lists
def _write(p, data: bytes) -> str:
    p.write_bytes(data)
    return str(p)


def test_read_id_list_all_lines_count_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path / "test_id.txt", b"6,10,17\n21,24\n")
    with caplog.at_level(logging.WARNING, logger="vdreid.data.splitfiles"):
        assert read_id_list(path) == [6, 10, 17, 21, 24]  # AGW's reader would keep 3 of the 5
    assert "lines 1, 2" in caplog.text and "test_id.txt" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vdreid.data.splitfiles"):
        assert read_id_list(_write(tmp_path / "one.txt", b" 0006, 10 ,17,\n\n")) == [6, 10, 17]
    assert caplog.text == ""  # one line: the released format, nothing to say


@pytest.mark.parametrize(
    "data, pattern",
    [
        (b"6,10\n1_4,17\n", r":2: item 1 is '1_4', not an integer id"),
        (b"6,,10\n", r":1: item 2 is '', not an integer id"),
        (b"6;10;17\n", r":1: item 1 is '6;10;17'"),
        (b"6,10\n17,6\n", r":2: ids listed more than once: \[6\] \(first on line 1\)"),
        (b"6,0\n", r":1: id 0 out of range 1\.\.9999"),
        (b"6,10\n\xff\n", r":2: byte 0xff"),
        (b"\n\n", r":1: empty split file"),
    ],
)
def test_read_id_list_errors_name_file_and_line(tmp_path, data, pattern):
    with pytest.raises(SplitFileError, match=r"ids\.txt" + pattern):
        read_id_list(_write(tmp_path / "ids.txt", data))


def test_read_id_list_bom(tmp_path):
    assert read_id_list(_write(tmp_path / "a.txt", codecs.BOM_UTF8 + b"6,10\n")) == [6, 10]


# ------------------------------------------------------------------------------------------------ idx files
def test_read_idx_file(tree):
    ds = tree / "ds"
    idx = _write(tree / "idx.txt", codecs.BOM_UTF8 + b"a/1.bmp 0\r\na/2.bmp 12\n\n")
    assert read_idx_file(idx, str(ds)) == [(str(ds / "a" / "1.bmp"), 0), (str(ds / "a" / "2.bmp"), 12)]


@pytest.mark.parametrize(
    "line, error, pattern",
    [
        (b"../outside/x.bmp 3", SplitFileError, "leaves the dataset folder"),
        (b"a/../../outside/x.bmp 3", SplitFileError, "leaves the dataset folder"),
        (b"ABS 3", SplitFileError, "absolute path"),
        (b"a/1.bmp 1_4", SplitFileError, "label '1_4' is not an integer"),
        (b"a/1.bmp +4", SplitFileError, "label '\\+4' is not an integer"),
        (b"a/1.bmp -1", SplitFileError, "negative label -1"),
        (b"a/1.bmp  3", SplitFileError, "one space"),
        (b"a/9.bmp 3", DatasetLayoutError, "image .*9.bmp.* not found"),
        (b"a/1.bmp \xe9", SplitFileError, "byte 0xe9 at column 9 is not valid UTF-8"),
    ],
)
def test_read_idx_file_errors_name_file_and_line(tree, line, error, pattern):
    line = line.replace(b"ABS", str(tree / "outside" / "x.bmp").encode())
    idx = _write(tree / "idx.txt", b"a/1.bmp 0\n" + line + b"\n")
    with pytest.raises(error, match=r"idx\.txt:2: .*" + pattern):
        read_idx_file(idx, str(tree / "ds"))


def test_read_idx_file_symlink_outside(tree):
    os.symlink(tree / "outside" / "x.bmp", tree / "ds" / "a" / "x.bmp")
    idx = _write(tree / "idx.txt", b"a/1.bmp 0\na/x.bmp 1\n")
    with pytest.raises(DatasetLayoutError, match=r"idx\.txt:2: path 'a/x\.bmp'|idx\.txt:2: path \"a/x\.bmp\""):
        read_idx_file(idx, str(tree / "ds"))
