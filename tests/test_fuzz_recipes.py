"""Mutated real recipes never crash `surgery plan`: exit status 0 or 2, never a traceback."""

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from surgery.cli import app

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p.read_text() for p in sorted((ROOT / "recipes").rglob("*.grow"))]
WORK = Path(tempfile.mkdtemp(prefix="surgery-fuzz-"))
# characters that matter to the grammar, plus some that do not belong anywhere
ALPHABET = st.sampled_from(list("=()[]@+,.%#\"\\x \n\t0123456789-_abdfl:;$<>") + ["init-", "ep", "steps", "model", "train", "grow"])


def _mutate(text: str, data) -> str:
    kind = data.draw(st.sampled_from(["delete", "insert", "swap", "shuffle", "duplicate", "several"]))
    if kind == "several":
        for _ in range(data.draw(st.integers(2, 5))):
            text = _mutate_once(text, data, data.draw(st.sampled_from(["delete", "insert", "swap", "shuffle"])))
        return text
    return _mutate_once(text, data, kind)


def _mutate_once(text: str, data, kind: str) -> str:
    if not text:
        return text
    if kind in ("shuffle", "duplicate"):
        tokens = re.findall(r"\s+|[A-Za-z_][\w-]*|\d+(?:\.\d+)?[a-z%]*|\S", text)
        i = data.draw(st.integers(0, len(tokens) - 1))
        j = data.draw(st.integers(0, len(tokens) - 1))
        if kind == "shuffle":
            tokens[i], tokens[j] = tokens[j], tokens[i]
        else:
            tokens.insert(j, tokens[i])
        return "".join(tokens)
    i = data.draw(st.integers(0, len(text) - 1))
    if kind == "delete":
        n = data.draw(st.integers(1, 8))
        return text[:i] + text[i + n :]
    if kind == "insert":
        return text[:i] + data.draw(ALPHABET) + text[i:]
    j = data.draw(st.integers(0, len(text) - 1))
    chars = list(text)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SOURCES), data=st.data())
def test_mutated_recipes_exit_0_or_2_without_traceback(source, data):
    text = _mutate(source, data)
    path = WORK / "mutant.grow"
    path.write_text(text)
    result = CliRunner().invoke(app, ["plan", str(path), "--json"])
    assert result.exit_code in (0, 2), (text, result.output, result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert ": error: " in result.output or result.output.startswith("error:"), result.output
    else:
        assert result.exception is None
