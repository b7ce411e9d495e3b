"""The judge's prompt, its exact-A rule, template files, and generation on the tiny judge model."""

import pytest

from justrl_min.eval.judge import (
    DEFAULT_TEMPLATE,
    JudgeItem,
    build_prompt,
    check_template,
    judge,
    load_template,
    parse_verdict,
)

ITEM = JudgeItem(question="What is 3+4?", gold="7", response="3+4 is \\boxed{7}")


def test_default_prompt_holds_the_question_gold_and_full_response_and_the_three_labels():
    long_response = "step " * 1000 + "\\boxed{7}"
    prompt = build_prompt(JudgeItem("What is 3+4?", "7", long_response))
    assert "What is 3+4?" in prompt and long_response in prompt  # the whole response, not its box
    assert prompt.index("What is 3+4?") < prompt.index("[Reference answer]\n7\n") < prompt.index(long_response)
    for label in ("A: CORRECT", "B: INCORRECT", "C: INVALID"):
        assert label in prompt
    assert "\\boxed{}" in prompt  # doubled braces in the template are literal braces in the prompt


def test_braces_in_the_fields_are_not_format_fields():
    item = JudgeItem("Find {x}", "\\frac{1}{2}", "\\boxed{\\frac{1}{2}} {llm_response}")
    prompt = build_prompt(item, "{question}|{gold_answer}|{llm_response}")
    assert prompt == "Find {x}|\\frac{1}{2}|\\boxed{\\frac{1}{2}} {llm_response}"


@pytest.mark.parametrize("output, correct, label", [
    ("A", True, "A"),
    ("  A\n", True, "A"),        # stripped, as JustRL's grade.py does
    ("B", False, "B"),
    ("C", False, "C"),
    ("A.", False, ""),           # exactly A, nothing else
    ("a", False, ""),
    ("The answer is A", False, ""),
    ("\\boxed{A}", False, ""),
    ("", False, ""),
])
def test_only_exactly_A_is_correct(output, correct, label):
    verdict = parse_verdict(output)
    assert (verdict.correct, verdict.label, verdict.output) == (correct, label, output)


def test_judge_sends_one_prompt_per_item_in_order_and_reads_the_outputs():
    seen = []

    def generate(prompts):
        seen.append(prompts)
        return ["A", " B ", "maybe"]

    items = [ITEM, JudgeItem("q2", "1", "r2"), JudgeItem("q3", "2", "r3")]
    verdicts = judge(items, generate, template="{question}/{gold_answer}/{llm_response}")
    assert seen == [["What is 3+4?/7/3+4 is \\boxed{7}", "q2/1/r2", "q3/2/r3"]]
    assert [v.correct for v in verdicts] == [True, False, False]
    assert [v.label for v in verdicts] == ["A", "B", ""]
    assert judge([], generate) == [] and len(seen) == 1  # nothing to judge: no call


def test_judge_refuses_a_generator_that_drops_outputs():
    with pytest.raises(ValueError, match="returned 1 outputs for 2 prompts"):
        judge([ITEM, ITEM], lambda _prompts: ["A"])


def test_template_files(tmp_path):
    assert load_template("") == DEFAULT_TEMPLATE
    official_style = tmp_path / "cv_prompt.txt"
    official_style.write_text("Judge \\boxed{{}}.\n{question}\n{gold_answer}\n{llm_response}\nJudging:")
    assert build_prompt(ITEM, load_template(official_style)) == (
        "Judge \\boxed{}.\nWhat is 3+4?\n7\n3+4 is \\boxed{7}\nJudging:")
    with pytest.raises(ValueError, match="judge prompt not found"):
        load_template(tmp_path / "missing.txt")
    missing_field = tmp_path / "bad.txt"
    missing_field.write_text("{question} {gold_answer}")
    with pytest.raises(ValueError, match=r"bad.txt: .*missing \['llm_response'\]"):
        load_template(missing_field)
    with pytest.raises(ValueError, match=r"unknown \['answer'\]"):
        check_template("{question}{gold_answer}{llm_response}{answer}")
    with pytest.raises(ValueError, match="literal braces"):
        check_template("\\boxed{} {question}{gold_answer}{llm_response}")


def test_default_template_is_valid():
    assert check_template(DEFAULT_TEMPLATE) is DEFAULT_TEMPLATE


@pytest.fixture(scope="module")
def tiny_judge_model():
    from transformers import AutoModelForCausalLM

    from justrl_min.model import load_tokenizer
    from justrl_min.rollout import HFEngine
    from tests.tiny_judge import PROMPT_FILE, prepare_tiny_judge

    folder = prepare_tiny_judge(log=lambda *_: None)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = load_tokenizer(str(folder))
    return HFEngine(model, tokenizer, batch_size=64), tokenizer, load_template(folder / PROMPT_FILE)


def test_tiny_judge_generates_verdicts_through_its_chat_template(tiny_judge_model):
    from justrl_min.eval.judge import engine_generate
    from tests.tiny_judge import labelled_items

    engine, tokenizer, template = tiny_judge_model
    items = labelled_items(64, seed=1234)  # held out: training used seed + 1 = 1
    generate = engine_generate(engine, tokenizer, max_new_tokens=4)
    verdicts = judge([item for item, _ in items], generate, template)
    assert all(v.label in ("A", "B") for v in verdicts), [v.output for v in verdicts]
    assert all(v.correct == (v.output.strip() == "A") for v in verdicts)
    assert {v.label for v in verdicts} == {"A", "B"}  # it does discriminate (how well is not tested)
    # greedy: the same prompts give the same outputs, alone or in another batch
    assert [v.output for v in judge([item for item, _ in items[:8]], generate, template)] == \
        [v.output for v in verdicts[:8]]
