"""Manifest parsing and input listing plans (pure functions)."""

import pytest

from pipeline.manifest import describe_input, normalize, parse_manifest_text, relative_to, resolve_image

ROOT = "/data/in"


def rows(text, kind="csv"):
    return list(parse_manifest_text(text, ROOT, kind))


def test_csv_with_bom_crlf_blank_lines_and_extra_columns():
    text = "\ufeffid,image,payload,comment\r\n1,a.jpg,00ff,x\r\n\r\n2,sub/b.png,dec:12,y\r\n"
    parsed = rows(text)
    assert [(r.line, r.path, r.payload, r.error) for r in parsed] == [
        (2, "/data/in/a.jpg", "00ff", None),
        (4, "/data/in/sub/b.png", "dec:12", None),
    ]


def test_csv_header_must_name_image_and_payload():
    with pytest.raises(ValueError, match="image,payload"):
        rows("file,bits\na.jpg,00\n")


def test_rows_escaping_input_are_errors_absolute_and_uris_are_allowed():
    parsed = rows("image,payload\n../secret.jpg,00\n/abs/x.jpg,01\ngs://b/y.jpg,02\nok/../z.jpg,03\n")
    assert parsed[0].error_code == "bad_path" and "leaves the --input folder" in parsed[0].error
    assert parsed[1].path == "/abs/x.jpg" and parsed[1].error is None
    assert parsed[2].path == "gs://b/y.jpg"
    assert parsed[3].path == "/data/in/z.jpg"


def test_missing_payload_and_short_rows_are_row_errors():
    parsed = rows("image,payload\na.jpg,\nb.jpg\n")
    assert [r.error_code for r in parsed] == ["bad_payload", "bad_payload"]


def test_jsonl_rows_and_bad_lines():
    text = '{"image": "a.jpg", "payload": "0a"}\n\nnot json\n[1, 2]\n{"image": 5, "payload": "00"}\n'
    parsed = rows(text, "jsonl")
    assert parsed[0].path == "/data/in/a.jpg" and parsed[0].payload == "0a"
    assert [r.error_code for r in parsed[1:]] == ["bad_manifest_row"] * 3
    assert [r.line for r in parsed] == [1, 3, 4, 5]


def test_input_plans():
    assert describe_input("/d", is_dir=True, is_file=False).pattern == "/d/**"
    assert describe_input("/d/x.jpg", is_dir=False, is_file=True).root == "/d"
    glob = describe_input("gs://b/in/*/x*.jpg", is_dir=False, is_file=False)
    assert glob.pattern == "gs://b/in/*/x*.jpg" and glob.root == "gs://b/in"
    prefix = describe_input("gs://b/in/day1", is_dir=False, is_file=False)
    assert prefix.pattern == "gs://b/in/day1*" and prefix.root == "gs://b/in"


def test_relative_and_normalize():
    assert relative_to("gs://b/in", "gs://b/in/x/y.jpg") == "x/y.jpg"
    assert relative_to("/a/b", "/a/bc/y.jpg") is None
    assert normalize("gs://b//in/./x/../y.jpg") == "gs://b/in/y.jpg"
    assert resolve_image(ROOT, "  ")[1] == "empty image path"
