"""The Con-GRPO reward (Eq. 3-6): format, accuracy, and consistency judged by a locally loaded model.

Imports nothing from the project, so it can be copied alone into another experiment.

    R(Y) = λ_fmt R_fmt(Y) + λ_acc R_acc(A, A*) + λ_con R_con(T, A, Q)                          (Eq. 3)

R_con asks a judge F to deduce the answer from the thought T and the question Q alone (no image, no answer):
R_con = 1 iff F(T, Q) = A, the model's own answer (Eq. 6). The judge scores the next token's log-probability of
each option letter (A-D in MedAD; up to J in a converted benchmark) in one batched forward pass, without
generation: deterministic and cheap.
"""
import re
from contextlib import nullcontext

import torch

LETTERS = "ABCDEFGHIJ"  # four options in MedAD, up to ten in a converted benchmark
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT = re.compile(r"\s*<think>(.*)</think>\s*<answer>(.*)</answer>\s*", re.S)
_LETTER = re.compile(r"\(?([A-J])\)?[.:]?(?:\s+(.*))?", re.S)  # B, B., (B), B), B: and what follows: B. Left Upper
# Qwen's special tokens all read <|...|> (<|im_start|>, <|box_start|>, <|image_pad|>, ...); others can be given
SPECIAL = re.compile(r"<\|[^|<>\s]+\|>")
JUDGE_SYSTEM = ("You are a careful medical expert. Read the question, its options and the reasoning, then give the "
                "letter of the option that the reasoning concludes inside <answer> </answer>.")


# ---- format and accuracy (Eq. 4-5) ----

def format_reward(completion: str, ended: bool = True, special_tokens=()) -> float:
    """R_fmt (Eq. 4): 1.0 iff the completion is exactly <think>T</think><answer>A</answer> (whitespace around and
    between allowed), one of each tag, T and A not empty, it ended with the end-of-turn token within the length limit
    (`ended`), and it holds no other special token; else 0.0. `completion` is decoded without its final end-of-turn
    token and with every other special token kept: a cut-off completion, or one that writes <|im_start|> into its
    text, is not well formed. `special_tokens`: a tokenizer's special tokens beyond Qwen's <|...|> ones."""
    if not ended or SPECIAL.search(completion) or any(t in completion for t in special_tokens):
        return 0.0
    if any(completion.count(tag) != 1 for tag in TAGS):
        return 0.0
    match = _FORMAT.fullmatch(completion)
    return float(bool(match and match.group(1).strip() and match.group(2).strip()))


def split_think_answer(completion: str) -> tuple[str | None, str | None]:
    """(thought, answer text): the text inside the first <think></think>, and inside the first <answer></answer> after
    it, never one inside the thought (nor after an unclosed <think>); without any <think>, the first <answer>."""
    think = re.search(r"<think>(.*?)</think>", completion, re.S)
    after = completion[think.end():] if think else "" if "<think>" in completion else completion
    answer = re.search(r"<answer>(.*?)</answer>", after, re.S)
    return (think.group(1) if think else None), (answer.group(1) if answer else None)


def _same(text: str) -> str:
    """Case and runs of whitespace aside, as data.same_text compares options (rewards.py imports nothing)."""
    return " ".join(text.split()).casefold()


def parse_answer(answer_text: str | None, options: list[str]) -> str | None:
    """The option letter an answer names: one option's text (case and spaces aside), or a letter (B, B., (B), B), B:)
    followed by nothing or by that letter's own option text ("B. Right Upper" when B is Right Upper); None when it
    names none or more than one ("A or B", "A: no, it is B", "B. Left Upper" when B is Right Upper), or a letter beyond
    the options ("E" of four)."""
    if answer_text is None:
        return None
    text = answer_text.strip()
    by_text = {_same(option): letter for letter, option in zip(LETTERS, options)}
    if _same(text) in by_text:
        return by_text[_same(text)]
    match = _LETTER.fullmatch(text)
    if not match:
        return None
    letter, rest = match.group(1), (match.group(2) or "").strip().rstrip(".").strip()
    if LETTERS.index(letter) >= len(options):
        return None
    return letter if not rest or _same(rest) == _same(options[LETTERS.index(letter)]) else None


def answer_letter(completion: str, options: list[str]) -> str | None:
    return parse_answer(split_think_answer(completion)[1], options)


def accuracy_reward(completion: str, options: list[str], answer: str) -> float:
    """R_acc (Eq. 5): 1.0 iff the parsed answer letter is the right one."""
    return float(answer_letter(completion, options) == answer)


# ---- consistency (Eq. 6) ----

def hide_conclusion(thought: str) -> str:
    """The thought without its concluding part, for --judge-view hide-conclusion: where the thought has several
    paragraphs (split at blank lines), its last paragraph goes; else its last sentence (sentences end at . ! or ?
    followed by a space or a line break). A thought of one sentence leaves nothing: the judge is not asked and R_con
    is 0, since nothing is left from which the answer could follow."""
    paragraphs = [p for p in re.split(r"\n\s*\n", thought.strip()) if p.strip()]
    if len(paragraphs) > 1:
        return "\n\n".join(paragraphs[:-1])
    sentences = re.split(r"(?<=[.!?])\s+", thought.strip())
    return " ".join(sentences[:-1])


def judge_views() -> dict:
    """What the judge of Eq. 6 reads of a thought: all of it (the paper), or all but its concluding part."""
    return {"full": lambda thought: thought, "hide-conclusion": hide_conclusion}


def stated_conclusion(thought: str | None, options: list[str], letter: str | None) -> bool:
    """Does the thought state the conclusion it leads to: name the chosen option's text (case and spaces aside) or
    announce its letter ("the answer is B", "option B", "(B)")? A judge can then copy the answer rather than
    follow the reasoning (docs/consistency.md)."""
    if not thought or letter is None or LETTERS.index(letter) >= len(options):
        return False
    if _same(options[LETTERS.index(letter)]) in _same(thought):
        return True
    return bool(re.search(rf"(?:(?i:answer|option|choice)(?:\s+(?i:is))?\s*[:\-]?\s*\(?{letter}\)?|\({letter}\))(?![\w-])",
                          thought))


def judge_prompt(tokenizer, question: str, options: list[str], thought: str) -> str:
    """The judge reads the question, the options and the thought, and continues right after <answer>. Special tokens
    the thought holds are dropped: a completion cannot write the judge's chat turns."""
    thought = SPECIAL.sub("", thought)
    listed = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))
    chat = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": f"{question}\n{listed}"}]
    head = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return f"{head}<think>{thought.strip()}</think><answer>"


class Judge:
    """F(T, Q) of Eq. 6: the option letter a causal LM deduces from the thought alone.

    `model` is any causal LM (a vision-language model is used without an image). With `disable_adapter`, a PEFT
    model is judged with its adapter off: `--judge self` with a GRPO LoRA reuses π_SFT's weights, no second copy.
    """

    def __init__(self, model, tokenizer, *, max_thought_tokens: int = 768, disable_adapter: bool = False,
                 batch_tokens: int = 65536):
        self.model, self.tokenizer = model, tokenizer
        self.max_thought_tokens, self.disable_adapter = max_thought_tokens, disable_adapter
        self.batch_tokens = batch_tokens  # rows x padded length of one forward: a bound on the judge's memory
        self.letters = self._letter_tokens(4)

    def _letter_tokens(self, n: int) -> list[tuple[int, int]]:
        """(token, fused) of each of the first n letters after the prompt: the token a letter adds, and 1 where the
        tokenizer fuses it with the prompt's last token ('>A' is one piece for Qwen's pre-tokenizer) so that its
        log-probability is read one position earlier, 0 where it follows that token."""
        probe = judge_prompt(self.tokenizer, "Q?", [f"option {i}" for i in range(n)], "T.")
        alone = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        out = []
        for letter in LETTERS[:n]:
            ids = self.tokenizer(probe + letter, add_special_tokens=False)["input_ids"]
            fused = 0 if ids[:-1] == alone else 1 if ids[:-1] == alone[:-1] else None
            if fused is None or (fused and ids[-1] == alone[-1]):
                raise ValueError(f"the judge's tokenizer does not spell the letter {letter} in one token after "
                                 f"'<answer>' (token ids from the prompt's last token on: {ids[len(alone) - 1:]}); "
                                 "use another judge")
            out.append((ids[-1], fused))
        if len({token for token, _ in out}) != n:
            raise ValueError(f"the judge's tokenizer gives two letters of A-{LETTERS[n - 1]} one token; use another judge")
        return out

    def _truncate(self, thought: str) -> str:
        ids = self.tokenizer(thought, add_special_tokens=False)["input_ids"]
        return thought if len(ids) <= self.max_thought_tokens else \
            self.tokenizer.decode(ids[-self.max_thought_tokens:])  # keep the end: the conclusion

    def letter_logits(self, questions: list[str], options: list[list[str]], thoughts: list[str]) -> torch.Tensor:
        """The next token's log-probability of each option letter after each judge prompt, [N, most options]
        (-inf beyond a row's own options), batched: as many rows a forward as keep rows x padded length within
        batch_tokens (with gradients when enabled: `train_sft.py --judge` trains a judge on them)."""
        n = max(map(len, options))
        if len(self.letters) < n:
            self.letters = self._letter_tokens(n)
        rows = [self.tokenizer(judge_prompt(self.tokenizer, q, o, self._truncate(t)), add_special_tokens=False)["input_ids"]
                for q, o, t in zip(questions, options, thoughts)]
        chunks, start = [], 0
        for end in range(1, len(rows) + 1):  # consecutive rows while (rows) x (longest) fits
            if end == len(rows) or (end + 1 - start) * max(map(len, rows[start:end + 1])) > self.batch_tokens:
                chunks.append(rows[start:end])
                start = end
        scores = torch.cat([self._forward(chunk, self.letters[:n]) for chunk in chunks])
        beyond = torch.arange(n, device=scores.device)[None, :] >= torch.tensor([len(o) for o in options],
                                                                               device=scores.device)[:, None]
        return scores.masked_fill(beyond, float("-inf"))

    def _forward(self, rows: list[list[int]], letters: list[tuple[int, int]]) -> torch.Tensor:
        T = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows])  # left padding: the last position is real
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
        device = next(self.model.parameters()).device
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with self.model.disable_adapter() if self.disable_adapter else nullcontext():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                position_ids=positions.to(device), logits_to_keep=2, use_cache=False).logits
        logp = logits.float().log_softmax(-1)  # [rows, 2, V]: after the prompt but its last token, and after it
        return torch.stack([logp[:, 1 - fused, token] for token, fused in letters], 1)

    @torch.no_grad()
    def __call__(self, questions: list[str], options: list[list[str]], thoughts: list[str]) -> list[str]:
        """One letter per thought, from batched forward passes."""
        if not thoughts:
            return []
        return [LETTERS[i] for i in self.letter_logits(questions, options, thoughts).argmax(-1).tolist()]


def consistency_rewards(judge, completions: list[str], questions: list[str], options: list[list[str]],
                        view: str = "full"):
    """R_con (Eq. 6) per completion, and the judge's letters (None where it was not asked). The judge reads the
    thought as `view` shows it (judge_views: the whole thought, or all but its conclusion).

    0.0 without asking the judge when the thought (as shown) is empty or the answer cannot be parsed.
    """
    show = judge_views()[view]
    asked, judged, shown = [], [None] * len(completions), {}
    for i, (completion, opts) in enumerate(zip(completions, options)):
        thought, answer = split_think_answer(completion)
        shown[i] = show(thought) if thought else ""
        if shown[i].strip() and parse_answer(answer, opts):
            asked.append(i)
    letters = judge([questions[i] for i in asked], [options[i] for i in asked], [shown[i] for i in asked])
    for i, letter in zip(asked, letters):
        judged[i] = letter
    rewards = [float(j is not None and j == answer_letter(c, o)) for c, o, j in zip(completions, options, judged)]
    return rewards, judged


# ---- the total (Eq. 3) ----

def total_reward(fmt, acc, con, lambda_fmt: float = 1 / 3, lambda_acc: float = 1 / 3, lambda_con: float = 1 / 3):
    """R = λ_fmt R_fmt + λ_acc R_acc + λ_con R_con (Eq. 3); works on floats or tensors."""
    return lambda_fmt * fmt + lambda_acc * acc + lambda_con * con


def score(completions: list[str], records: list[dict], judge=None, *, ended=None, special_tokens=(),
          judge_view: str = "full", lambda_fmt: float = 1 / 3, lambda_acc: float = 1 / 3,
          lambda_con: float = 1 / 3) -> dict:
    """All rewards of a batch of completions; records[i] (question, options, answer) is completion i's question, and
    ended[i] whether it stopped with the end-of-turn token (default: all did).

    Returns float tensors `reward`, `format`, `accuracy`, `consistency` [N], the judge's `judge_letters` and
    `stated` (does the thought state its conclusion: stated_conclusion). Without a judge the consistency part is not
    computed and is 0.
    """
    options = [r["options"] for r in records]
    ended = [True] * len(completions) if ended is None else [bool(e) for e in ended]
    fmt = torch.tensor([format_reward(c, e, special_tokens) for c, e in zip(completions, ended)])
    acc = torch.tensor([accuracy_reward(c, r["options"], r["answer"]) for c, r in zip(completions, records)])
    if judge is not None:
        con, letters = consistency_rewards(judge, completions, [r["question"] for r in records], options, judge_view)
        con = torch.tensor(con)
    else:
        con, letters = torch.zeros(len(completions)), [None] * len(completions)
    reward = total_reward(fmt, acc, con, lambda_fmt, lambda_acc, lambda_con)
    stated = torch.tensor([float(stated_conclusion(split_think_answer(c)[0], o, answer_letter(c, o)))
                           for c, o in zip(completions, options)])
    return {"reward": reward, "format": fmt, "accuracy": acc, "consistency": con, "judge_letters": letters,
            "stated": stated}
