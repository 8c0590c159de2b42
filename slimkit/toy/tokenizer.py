"""The toy world's byte-level BPE tokenizer, trained with `tokenizers` on the tasks' text.

- every digit is its own token (merged digit strings make arithmetic much harder to learn);
- merges may cross spaces, so frequent phrases (". Check: ", "Be concise.") become single tokens;
- ", " is its own token, so list items and fields tokenize the same wherever they appear;
- newlines are their own tokens, so the chat template's "assistant\\n" never merges with the answer:
  tokenizing the prompt and the answer separately gives the same ids as the whole text;
- the tasks' content words (job titles, places, skills, companies) are isolated before BPE, so a
  word has the same tokens wherever it stands ("title: nurse", "hiring a nurse for") and a query
  field can be matched to a posting by token identity, in any layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

EOS = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL = [PAD, "<|im_start|>", EOS]

# Qwen-style chat template (without the thinking block).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def isolate_pattern(words: Iterable[str] = ()) -> str:
    """The pre-tokenizer's split pattern: digits, newlines, ", " and each of `words` as a whole word
    (longest first, so "machine learning engineer" wins over "engineer")."""
    alternatives = sorted({w for w in words if w}, key=lambda w: (-len(w), w))
    pattern = r"\d|\n|, "
    if alternatives:
        pattern = r"\b(?:" + "|".join(re.escape(w) for w in alternatives) + r")\b|" + pattern
    return pattern


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048, words: Iterable[str] = ()):
    """Train the BPE on `texts` and wrap it as a transformers fast tokenizer with a chat template;
    `words` are isolated before BPE (see `isolate_pattern`)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(isolate_pattern(words)), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        max_token_length=32,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def corpus(examples_by_task: dict[str, list], words: Iterable[str] = (), word_repeats: int = 1000
           ) -> Iterable[str]:
    """Training text for the tokenizer: each example as the model sees it (roles included), plus
    `words` (e.g. job titles and places) repeated alone so that each gets its own whole-word tokens."""
    for exs in examples_by_task.values():
        for ex in exs:
            yield f"user\n{ex.prompt}\nassistant\n{ex.answer}"
    words = list(words)
    for _ in range(word_repeats):
        yield from words
