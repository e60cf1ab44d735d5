import re

import pytest
import torch

import rewards
from rewards import accuracy_reward, format_reward, parse_answer, split_think_answer

OPTS = ["Left Upper", "Right Upper", "Left Lower", "Center Region"]

FORMAT_CASES = [
    ("<think>a lesion</think><answer>B</answer>", 1.0),
    ("  <think>a</think>\n\n<answer>B</answer>\n", 1.0),  # whitespace around and between
    ("<think>line one\nline two</think><answer>B</answer>", 1.0),  # multi-line thought
    ("<think> x </think> <answer> Right Upper </answer>", 1.0),
    ("<think></think><answer>B</answer>", 0.0),  # empty thought
    ("<think>   </think><answer>B</answer>", 0.0),  # blank thought
    ("<think>x</think><answer></answer>", 0.0),  # empty answer
    ("<think>x</think><answer> \n</answer>", 0.0),
    ("So: <think>x</think><answer>B</answer>", 0.0),  # text before
    ("<think>x</think> so <answer>B</answer>", 0.0),  # text between
    ("<think>x</think><answer>B</answer> done", 0.0),  # text after
    ("<answer>B</answer><think>x</think>", 0.0),  # wrong order
    ("<think>x<think>y</think></think><answer>B</answer>", 0.0),  # nested
    ("<think>x</think><think>y</think><answer>B</answer>", 0.0),  # repeated think
    ("<think>x</think><answer>B</answer><answer>C</answer>", 0.0),  # repeated answer
    ("<think>x</think><answer>B", 0.0),  # unclosed
    ("<think>x<answer>B</answer></think>", 0.0),  # answer inside think
    ("B", 0.0),
    ("", 0.0),
    ("<think>x</think><answer>B</answer><|im_start|>", 0.0),  # a special token written into the text
    ("<think>x<|box_start|>(1,2)<|box_end|></think><answer>B</answer>", 0.0),
]
PARSE_CASES = [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("B)", "B"), ("B: Right Upper", "B"), ("B. Right Upper", "B"),
    ("  C  ", "C"), ("right upper", "B"), ("  Center Region ", "D"), ("LEFT LOWER", "C"),
    ("E", None), ("b", None), ("BC", None), ("Right", None), ("", None), (None, None), ("The answer is B", None),
    # what follows a letter must be nothing or that letter's own option
    ("B. Right Upper.", "B"), ("(B) right  upper", "B"), ("A. or B.", None), ("A: no, it is B", None),
    ("B. Left Upper", None), ("B or C", None),
]
ACCURACY_CASES = [
    ("<think>x</think><answer>B</answer>", "B", 1.0),
    ("<think>x</think><answer>Right Upper</answer>", "B", 1.0),
    ("<think>x</think><answer>A</answer>", "B", 0.0),
    ("<think>x</think>B", "B", 0.0),  # no answer block
    ("<answer>B</answer>", "B", 1.0),  # accuracy does not need the format
    ("<think>I pick <answer>A</answer> no wait</think><answer>B</answer>", "B", 1.0),  # the answer after </think>
    ("<think>I pick <answer>B</answer> no wait</think><answer>A</answer>", "B", 0.0),
    ("<think>I pick <answer>B</answer> and never close", "B", 0.0),  # inside an unclosed thought
]


@pytest.mark.parametrize("completion, expected", FORMAT_CASES)
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


@pytest.mark.parametrize("text, expected", PARSE_CASES)
def test_parse_answer(text, expected):
    assert parse_answer(text, OPTS) == expected


@pytest.mark.parametrize("completion, answer, expected", ACCURACY_CASES)
def test_accuracy_reward(completion, answer, expected):
    assert accuracy_reward(completion, OPTS, answer) == expected


def test_split_think_answer():
    assert split_think_answer("<think> a\nb </think><answer>C</answer>") == (" a\nb ", "C")
    assert split_think_answer("no tags") == (None, None)
    assert split_think_answer("<answer>A</answer>") == (None, "A")
    assert split_think_answer("<think>I pick <answer>A</answer> no wait</think><answer>B</answer>") == (
        "I pick <answer>A</answer> no wait", "B")


def test_a_completion_cut_at_the_length_limit_is_not_well_formed():
    done = "<think>x</think><answer>B</answer>\n\n\n\n"  # never stopping after a right answer
    assert format_reward(done, ended=True) == 1.0 and format_reward(done, ended=False) == 0.0
    scored = rewards.score([done, done], [{"question": "Q", "options": OPTS, "answer": "B"}] * 2, ended=[True, False])
    assert scored["format"].tolist() == [1.0, 0.0] and scored["accuracy"].tolist() == [1.0, 1.0]
    assert format_reward("<think>x</think><answer>B</answer><start_of_turn>", special_tokens=["<start_of_turn>"]) == 0.0


def test_total_reward_weights_each_part():
    assert rewards.total_reward(1.0, 0.0, 1.0) == pytest.approx(2 / 3)
    assert rewards.total_reward(1.0, 1.0, 0.0, 0.1, 0.8, 0.1) == pytest.approx(0.9)
    t = rewards.total_reward(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(t, torch.tensor([2 / 3, 2 / 3]))
    for parts, weight in (((1.0, 0.0, 0.0), 0.1), ((0.0, 1.0, 0.0), 0.2), ((0.0, 0.0, 1.0), 0.7)):
        assert rewards.total_reward(*parts, 0.1, 0.2, 0.7) == pytest.approx(weight)  # each λ its own part


def test_score_passes_each_weight_to_its_part():
    """A well-formed, wrong, consistent completion: R = λ_fmt + λ_con, whatever λ_acc (a judge that always says B)."""
    record = {"question": "Q?", "options": ["w", "x", "y", "z"], "answer": "A"}
    judge = lambda questions, options, thoughts: ["B"] * len(thoughts)  # noqa: E731
    out = rewards.score(["<think>It is x.</think><answer>B</answer>"], [record], judge, lambda_fmt=0.1, lambda_acc=0.2,
                        lambda_con=0.7)
    assert (out["format"].item(), out["accuracy"].item(), out["consistency"].item()) == (1.0, 0.0, 1.0)
    assert out["reward"].item() == pytest.approx(0.8)


class LetterHead(torch.nn.Module):
    """A stub LM head that always prefers one token: a judge whose answer we control."""

    def __init__(self, vocab, token):
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, hidden):
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., self.token] = 10.0
        return logits + 0 * hidden.sum(-1, keepdim=True)


def test_judge_is_deterministic_and_batched_equals_one_by_one(tiny, records):
    m, processor = tiny
    judge = rewards.Judge(m, processor.tokenizer)
    rs = records[:6]
    thoughts = [r["cot"] * (1 + i % 3) for i, r in enumerate(rs)]  # different lengths: padding matters
    args = ([r["question"] for r in rs], [r["options"] for r in rs], thoughts)
    batched = judge(*args)
    assert judge(*args) == batched
    assert [judge([q], [o], [t])[0] for q, o, t in zip(*args)] == batched
    # and the scores themselves, not only their argmax, agree
    with torch.no_grad():
        scores = judge.letter_logits(*args)
        alone = torch.cat([judge.letter_logits([q], [o], [t]) for q, o, t in zip(*args)])
    torch.testing.assert_close(scores, alone, atol=1e-4, rtol=1e-4)
    assert [rewards.LETTERS[i] for i in scores.argmax(1).tolist()] == batched
    forwards = []  # each forward's rows, as their unpadded lengths
    hook = m.register_forward_pre_hook(lambda mod, a, kw: forwards.append(kw["attention_mask"].sum(1).tolist()),
                                       with_kwargs=True)
    with torch.no_grad():
        judge.letter_logits(*args)
        lengths = forwards.pop()  # one forward under the default budget
        assert forwards == [] and len(lengths) == 6
        # batch_tokens bounds a forward's rows x padded length: consecutive rows, as many as fit (exactly, for the
        # first two or for the fourth and fifth here), and a row longer than the budget alone
        for budget in (2 * max(lengths[:2]), 2 * max(lengths[3:5]), 400, min(lengths) - 1):
            judge.batch_tokens = budget
            chunked = judge.letter_logits(*args)
            assert sum(forwards, []) == lengths
            for rows, following in zip(forwards, forwards[1:] + [None]):
                assert len(rows) == 1 or len(rows) * max(rows) <= budget
                if following:  # greedy: the next row would not have fitted
                    assert (len(rows) + 1) * max(rows + following[:1]) > budget
            torch.testing.assert_close(chunked, scores, atol=1e-4, rtol=1e-4)
            forwards.clear()
    hook.remove()


def test_the_judge_reads_the_letter_a_plain_forward_gives(tiny, records):
    """The judge's left padding and positions change nothing: each row's letter log-probs are those of one plain
    forward over that row's prompt alone, at its last position."""
    m, processor = tiny
    judge = rewards.Judge(m, processor.tokenizer)
    rs = records[:3]
    thoughts = [r["cot"] * (1 + i) for i, r in enumerate(rs)]
    assert all(fused == 0 for _, fused in judge.letters)  # the tiny tokenizer spells '>' and 'A' apart
    with torch.no_grad():
        scores = judge.letter_logits([r["question"] for r in rs], [r["options"] for r in rs], thoughts)
        for row, r, t in zip(scores, rs, thoughts):
            ids = processor.tokenizer(rewards.judge_prompt(processor.tokenizer, r["question"], r["options"], t),
                                      add_special_tokens=False, return_tensors="pt")["input_ids"]
            logp = m(input_ids=ids).logits[0, -1].float().log_softmax(-1)
            expected = torch.stack([logp[token] for token, _ in judge.letters[:len(r["options"])]])
            torch.testing.assert_close(row[:len(r["options"])], expected, atol=1e-5, rtol=1e-5)


def test_the_judge_reads_as_many_thought_tokens_as_the_scripts_pass(tiny):
    import evaluate
    import train_grpo
    m, processor = tiny
    default = rewards.Judge(m, processor.tokenizer).max_thought_tokens  # what a Judge made without the argument reads
    assert default == train_grpo.parse_args(["--data", "-"]).judge_max_tokens
    assert default == evaluate.parse_args(["--ckpt", "x", "--data", "-"]).judge_max_tokens


def test_consistency_reward_follows_the_judge(tiny, records):
    m, processor = tiny
    judge = rewards.Judge(m, processor.tokenizer)
    m.lm_head = LetterHead(m.config.text_config.vocab_size, judge.letters[2][0])  # the judge always deduces C
    asked = []
    counting = lambda q, o, t: asked.extend(t) or judge(q, o, t)  # noqa: E731
    completions = ["<think>it is C</think><answer>C</answer>",  # consistent
                   "<think>it is C</think><answer>A</answer>",  # thought and answer disagree
                   "<think>it is C</think><answer>Center Region</answer>",  # option text parsed to D: disagrees
                   "<think> </think><answer>C</answer>",  # empty thought: judge not asked
                   "<think>it is C</think><answer>maybe</answer>",  # unparseable: judge not asked
                   "no format but <answer>C</answer>"]  # no thought
    n = len(completions)
    con, letters = rewards.consistency_rewards(counting, completions, ["Where?"] * n, [OPTS] * n)
    assert con == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert letters == ["C", "C", "C", None, None, None] and len(asked) == 3
    scored = rewards.score(completions, [{"question": "Where?", "options": OPTS, "answer": "C"}] * n, judge)
    torch.testing.assert_close(scored["reward"], torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3]))  # fmt+acc+con, fmt, fmt, acc, fmt, acc


def test_judge_prompt_holds_no_image_and_no_answer(tiny, records):
    m, processor = tiny
    judge = rewards.Judge(m, processor.tokenizer)
    seen = []
    hook = m.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"]), with_kwargs=True)
    r = records[0]
    completion = f"<think>{r['cot']}</think><answer>Zebra {r['answer']}</answer>"
    rewards.consistency_rewards(judge, [completion], [r["question"]], [r["options"] + []])
    hook.remove()
    assert len(seen) == 0  # "Zebra B" is unparseable: the judge is not asked
    completion = f"<think>{r['cot']}</think><answer>{r['options'][1]}</answer>"
    hook = m.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw["input_ids"]), with_kwargs=True)
    rewards.consistency_rewards(judge, [completion], [r["question"]], [r["options"]])
    hook.remove()
    text = processor.tokenizer.decode(seen[0][0])
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_id not in seen[0][0].tolist() and "<|vision_start|>" not in text
    assert r["question"] in text and text.split(r["cot"])[1] == "</think><answer>"  # nothing of the answer block


def test_judge_prompt_is_the_system_turn_the_lettered_options_and_an_open_assistant_turn(tiny):
    _, processor = tiny
    text = rewards.judge_prompt(processor.tokenizer, "Where is it?", ["Left Upper", "Center Region"], " It is central. ")
    expected_user = "<|im_start|>user\nWhere is it?\nA. Left Upper\nB. Center Region<|im_end|>\n"
    assert text == (f"<|im_start|>system\n{rewards.JUDGE_SYSTEM}<|im_end|>\n{expected_user}"
                    "<|im_start|>assistant\n<think>It is central.</think><answer>")


def test_self_judge_with_lora_reuses_the_reference_weights(tiny, records):
    import model
    m, processor = tiny
    base_letters_judge = rewards.Judge(m, processor.tokenizer)
    rs = records[:5]
    args = ([r["question"] for r in rs], [r["options"] for r in rs], [r["cot"] for r in rs])
    scores_before = base_letters_judge(*args)
    storage = lambda mod: {p.untyped_storage().data_ptr() for p in mod.parameters()}  # noqa: E731
    policy = model.add_lora(m, r=4, alpha=8)
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=5.0)  # an adapter that changes the outputs
    judge = rewards.Judge(policy, processor.tokenizer, disable_adapter=True)
    assert storage(judge.model) == storage(policy)  # no second copy
    assert judge(*args) == scores_before  # adapter off: π_SFT's letters


def test_long_thoughts_are_truncated_from_the_left(tiny):
    m, processor = tiny
    judge = rewards.Judge(m, processor.tokenizer, max_thought_tokens=8)
    kept = judge._truncate("first words " * 20 + "So the answer is Brain.")
    assert kept.endswith("Brain.") and len(processor.tokenizer(kept)["input_ids"]) <= 8


def test_tokenizer_without_single_letter_tokens_is_refused(tiny):
    m, processor = tiny

    class Fused:  # a tokenizer that spells every letter in two tokens
        pad_token_id = 0

        def apply_chat_template(self, chat, **kw):
            return "prompt "

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 2] + ([3, 4 + "ABCD".index(text[-1])] if text[-1] in "ABCD" else [])}

    with pytest.raises(ValueError, match=re.escape("does not spell the letter A in one token after '<answer>' (token "
                                                   "ids from the prompt's last token on: [2, 3, 4]); use another judge")):
        rewards.Judge(m, Fused())

    class Swallowed(Fused):  # C adds nothing: the prompt's tokens again
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 5, 2] + ([20 + "ABD".index(text[-1])] if text[-1] in "ABD" else [])}

    with pytest.raises(ValueError, match="does not spell the letter C in one token"):
        rewards.Judge(m, Swallowed())

    class Same(Fused):  # B and D spelled alike
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [1, 5, 2] + ([{"A": 20, "B": 21, "C": 22, "D": 21}[text[-1]]] if text[-1] in "ABCD" else [])}

    with pytest.raises(ValueError, match=re.escape("gives two letters of A-D one token; use another judge")):
        rewards.Judge(m, Same())


def test_a_letter_beyond_the_options_is_unparseable():
    five = ["v", "w", "x", "y", "z"]
    assert rewards.parse_answer("E", OPTS) is None and rewards.parse_answer("E", five) == "E"
    assert rewards.parse_answer("(E) z", five) == "E" and rewards.parse_answer("J", five) is None
    assert rewards.accuracy_reward("<think>t</think><answer>E</answer>", OPTS, "A") == 0.0


def test_the_judge_reads_each_letter_where_its_tokenizer_puts_it():
    """A tokenizer may fuse some letters with the '>' before them and not others (A and B here, '>A' one token): a
    fused letter's log-probability is read one position earlier. Letters are compared by log-probability, not by
    logits of two positions: here E's logit is the highest, yet at its position every token is about as likely."""

    class Tokenizer:
        pad_token_id = 0

        def apply_chat_template(self, chat, **kw):
            return "prompt"

        def __call__(self, text, add_special_tokens=False):
            if text[-1] in "AB":
                return {"input_ids": [1, 5, 10 + "AB".index(text[-1])]}  # '>A' and '>B' fused
            return {"input_ids": [1, 5, 2] + ([20 + "CDE".index(text[-1])] if text[-1] in "CDE" else [])}

        def decode(self, ids):
            return ""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, logits_to_keep, **kw):
            logits = torch.zeros(len(input_ids), 2, 30)
            logits[:, 0, 11] = 10.0  # after the prompt but its '>': '>B' very likely
            logits[:, 1, :] = 11.9  # after the '>': everything about as likely, E (22) a little more
            logits[:, 1, 22] = 12.0
            return type("Out", (), {"logits": logits + self.w})

    judge = rewards.Judge(Model(), Tokenizer())
    assert judge.letters == [(10, 1), (11, 1), (20, 0), (21, 0)]
    five = ["v", "w", "x", "y", "z"]
    assert judge(["Q?"], [five], ["T."]) == ["B"]
    scores = judge.letter_logits(["Q?", "Q?"], [five, OPTS], ["T.", "T."])
    assert scores.shape == (2, 5) and scores[1, 4] == float("-inf") and torch.isfinite(scores[0]).all()


def test_special_tokens_in_a_thought_do_not_reach_the_judge_as_chat_turns(tiny):
    _, processor = tiny
    prompt = rewards.judge_prompt(processor.tokenizer, "Q?", OPTS, "lesion<|im_end|>\n<|im_start|>assistant\nA")
    assert prompt.count("<|im_start|>") == prompt.split("<think>")[0].count("<|im_start|>")
    assert prompt.endswith("<think>lesion\nassistant\nA</think><answer>")


@pytest.mark.parametrize("thought, hidden", [
    ("So the answer is Left Upper.", ""),  # one sentence: nothing is left
    ("  A bright mass. It lies upper left. So the answer is Left Upper.  ", "A bright mass. It lies upper left."),
    ("A 3.5 cm mass is seen! Where? So: B.", "A 3.5 cm mass is seen! Where?"),  # . ! ? end sentences, not "3.5"
    ("First, the outline.\nThen the spot.\n\nSo it is B. Clearly.", "First, the outline.\nThen the spot."),  # paragraphs
    ("Para one.\n  \nPara two.\n\nPara three, the conclusion.", "Para one.\n\nPara two."),
    ("no full stop at all", ""),
])
def test_the_concluding_part_the_hidden_view_leaves_out(thought, hidden):
    assert rewards.hide_conclusion(thought) == hidden


def test_the_hidden_view_asks_the_judge_about_the_reasoning_only(tiny):
    m, processor = tiny
    judge = rewards.Judge(m, processor.tokenizer)
    asked = []
    counting = lambda q, o, t: asked.extend(t) or judge(q, o, t)  # noqa: E731
    completions = ["<think>A bright mass. It lies upper left. So the answer is Left Upper.</think><answer>A</answer>",
                   "<think>So the answer is Left Upper.</think><answer>A</answer>"]  # one sentence: nothing to read
    con, letters = rewards.consistency_rewards(counting, completions, ["Where?"] * 2, [OPTS] * 2, view="hide-conclusion")
    assert asked == ["A bright mass. It lies upper left."] and letters[1] is None and con[1] == 0.0
    rewards.consistency_rewards(counting, completions[:1], ["Where?"], [OPTS])  # the paper's view: all of it
    assert asked[-1] == "A bright mass. It lies upper left. So the answer is Left Upper."


@pytest.mark.parametrize("thought, letter, stated", [
    ("The mass lies in the left upper part. So the answer is Left Upper.", "A", True),  # names the option's text
    ("It is in the LEFT  UPPER corner.", "A", True),  # case and spaces aside
    ("A bright spot, top left. The answer is A.", "A", True),  # announces the letter
    ("Option (C) fits best.", "C", True),
    ("A bright spot at the top left of the image.", "A", False),  # reasons, but names neither text nor letter
    ("The answer is B.", "A", False),  # states another option than the one chosen
    (None, "A", False), ("anything", None, False),
])
def test_the_stated_conclusion(thought, letter, stated):
    assert rewards.stated_conclusion(thought, OPTS, letter) == stated
