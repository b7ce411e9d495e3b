"""docs/prompt_lengths.md holds the table data/prompt_lengths.py prints today."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from justrl_min.config import BOXED_SUFFIX
from justrl_min.data import strip_dapo_wrapper
from justrl_min.eval.evaluate import EVAL_SUFFIX
from tests.core.test_data import SHARED

ROOT = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("data_prompt_lengths", ROOT / "data" / "prompt_lengths.py")
prompt_lengths = sys.modules.setdefault("data_prompt_lengths", importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(prompt_lengths)


def test_the_dapo_schema_row_counts_the_templated_prompt(standin_tokenizer):
    [row] = prompt_lengths.report(None, prompt_lengths.DAPO_SAMPLE, tokenizer=standin_tokenizer).splitlines()[2:]
    # Counted another way: the stripped problem and suffix alone, plus the template's five tokens
    # (BOS, <｜User｜> before; <｜Assistant｜>, <think>, "\n" after); golds cleaned ("\boxed{210}" is 210).
    rows = [json.loads(line) for line in prompt_lengths.DAPO_SAMPLE.read_text().splitlines()]
    problems = [strip_dapo_wrapper(r["prompt"][0]["content"]) for r in rows]
    count = lambda text: len(standin_tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    prompts = [count(p + BOXED_SUFFIX) + 5 for p in problems]
    evals = [count(p + EVAL_SUFFIX) + 5 for p in problems]
    golds = [count(g) for g in ("391", "44", "24", "2", "5", "29", "41", "210")]
    assert row == (f"| DAPO schema: dapo_schema_sample.jsonl | 8 | {statistics.median(prompts):g} | {max(prompts)} | "
                   f"0 | {max(evals)} | {statistics.median(golds):g} | {max(golds)} |")
    assert max(prompts) < 1024


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared benchmark files")
def test_the_committed_prompt_length_table_is_current(standin_tokenizer):
    table = prompt_lengths.report(SHARED, prompt_lengths.DAPO_SAMPLE, tokenizer=standin_tokenizer)
    assert len(table.splitlines()) == 2 + 9 + 1  # header, rule, nine benchmarks, the DAPO-schema sample
    assert table in (ROOT / "docs/prompt_lengths.md").read_text()
