"""The position-tracking loader: positions, refusals and limits a user would run into."""

from __future__ import annotations

import time

import pytest

from runner.spec.yaml import MAX_NODES, load_bytes


def load(text: str, **kwargs: int):  # type: ignore[no-untyped-def]
    return load_bytes("f.yaml", text.encode(), **kwargs)


def test_positions_are_one_based_and_point_at_the_node() -> None:
    loaded = load("a: 1\nsteps:\n  - id: scan\n    agent:   x\n")
    doc = loaded.documents[0]
    assert loaded.errors == []
    assert doc.data == {"a": 1, "steps": [{"id": "scan", "agent": "x"}]}
    assert doc.position(["a"]) == (1, 4)
    assert doc.position(["steps", 0]) == (3, 5)
    assert doc.position(["steps", 0, "agent"]) == (4, 14)
    assert doc.position(["steps", 0, "agent"], key=True) == (4, 5)


def test_missing_path_resolves_to_deepest_existing_node() -> None:
    doc = load("spec:\n  steps: []\n").documents[0]
    assert doc.position(["spec", "triggers"]) == (2, 3)
    assert doc.position(["spec", "steps", 3]) == (2, 10)


def test_multi_document_files_keep_their_own_positions() -> None:
    loaded = load("a: 1\n---\nb: 2\n---\n---\nc: 3\n")
    assert [d.data for d in loaded.documents] == [{"a": 1}, {"b": 2}, {"c": 3}]
    assert [d.index for d in loaded.documents] == [0, 1, 3]
    assert loaded.documents[2].position(["c"]) == (6, 4)


def test_duplicate_keys_are_errors_at_the_second_key() -> None:
    loaded = load("spec:\n  timeout: 1m\n  timeout: 2m\n")
    assert [str(e) for e in loaded.errors] == [
        "f.yaml:3:3: duplicate key 'timeout': each key may appear once in a mapping [/spec/timeout]"
    ]


def test_on_key_points_to_triggers() -> None:
    loaded = load("spec:\n  on:\n    push: {}\n")
    assert len(loaded.errors) == 1
    error = loaded.errors[0]
    assert (error.line, error.column) == (2, 3)
    assert "'triggers:'" in error.message
    assert loaded.documents == []


def test_quoted_on_is_a_plain_key() -> None:
    assert load('"on": 1\n').documents[0].data == {"on": 1}


def test_non_string_keys_are_refused() -> None:
    error = load("1: a\n").errors[0]
    assert (error.line, error.column) == (1, 1)
    assert "quote '1'" in error.message


def test_syntax_error_has_position() -> None:
    error = load("a: [1, 2\nb: 3\n").errors[0]
    assert error.message.startswith("YAML syntax error")
    assert (error.line, error.column) == (2, 2)


def test_tab_indentation_is_a_syntax_error_with_position() -> None:
    error = load("a:\n\tb: 1\n").errors[0]
    assert error.line == 2


def test_billion_laughs_fails_fast() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    started = time.perf_counter()
    loaded = load("\n".join(lines) + "\n")
    elapsed = time.perf_counter() - started
    assert loaded.documents == []
    assert f"more than {MAX_NODES} nodes" in loaded.errors[0].message
    assert elapsed < 5  # generous: a naive expansion would take hours and gigabytes


def test_recursive_alias_is_refused() -> None:
    loaded = load("a: &x\n  b: *x\n")
    assert loaded.documents == []
    assert "recursive alias" in loaded.errors[0].message


def test_merge_keys_work_and_own_keys_override() -> None:
    loaded = load("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert loaded.errors == []
    assert loaded.documents[0].data["other"] == {"x": 1, "y": 3}


def test_custom_tags_are_refused() -> None:
    error = load("a: !Ref foo\n").errors[0]
    assert "unsupported YAML tag '!Ref'" in error.message
    assert (error.line, error.column) == (1, 4)


def test_dates_stay_text() -> None:
    assert load("d: 2024-01-02\n").documents[0].data == {"d": "2024-01-02"}


def test_file_size_is_bounded() -> None:
    loaded = load("a: " + "x" * 100 + "\n", max_bytes=50)
    assert loaded.documents == []
    assert "limit is 50 bytes" in loaded.errors[0].message


def test_node_budget_is_configurable() -> None:
    loaded = load("a: [1, 2, 3, 4, 5]\n", max_nodes=4)
    assert "more than 4 nodes" in loaded.errors[0].message


def test_invalid_utf8_is_reported_at_its_position() -> None:
    loaded = load_bytes("f.yaml", b"a: 1\nb: \xff\n")
    error = loaded.errors[0]
    assert (error.line, error.column) == (2, 4)
    assert "UTF-8" in error.message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_files_have_no_documents_and_no_errors(text: str) -> None:
    loaded = load(text)
    assert loaded.documents == []
    assert loaded.errors == []


def test_positions_inside_merged_mappings() -> None:
    doc = load("base: &b {x: 1}\nother:\n  <<: *b\n  y: 3\n").documents[0]
    assert doc.position(["other", "y"]) == (4, 6)
    assert doc.position(["other", "x"]) == (1, 14)
