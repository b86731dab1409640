"""Pretrain the bundled tiny language model (alias ``tiny``) from Debian's English corpora.

The model is a GPT-2-architecture causal LM (~2.6M parameters) with a sentencepiece BPE
tokenizer (4,096 pieces, byte fallback). It is committed to the repository under
``text_envs/assets/tiny-lm`` so that everything in the project works offline.

Corpora (install them first; this script installs nothing itself)::

    sudo apt-get install fortunes fortunes-min wordnet-base

* ``/usr/share/games/fortunes/*``: fortune cookies, split on lines holding a single ``%``;
* ``/usr/share/wordnet/data.{noun,verb,adj,adv}``: the quoted example sentences after ``|``.

Usage::

    python scripts/build_tiny_lm.py --out text_envs/assets/tiny-lm --threads 1 --max-minutes 35

It prints the held-out loss (nats/token) as it trains and a few samples at the end. The
documents are split 95/5 into train/validation by a hash of their text, so the split is
stable across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import re
import tempfile
import time
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaTokenizer

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
SKIP_FORTUNE_FILES = {"art", "ascii-art"}  # pictures, not prose
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def read_fortunes(directory: Path = FORTUNE_DIR) -> list[str]:
    """Return every fortune as one whitespace-normalised string."""
    if not directory.is_dir():
        raise SystemExit(f"{directory} not found: run `apt-get install fortunes fortunes-min` first")
    texts: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.suffix in {".dat", ".u8"} or path.name in SKIP_FORTUNE_FILES or not path.is_file():
            continue
        raw = path.read_text(encoding="utf-8", errors="ignore")
        for chunk in re.split(r"^%\s*$", raw, flags=re.MULTILINE):
            text = " ".join(chunk.split())
            if 10 <= len(text) <= 600:
                texts.append(text)
    return texts


def read_wordnet_examples(directory: Path = WORDNET_DIR) -> list[str]:
    """Return the quoted example sentences of WordNet glosses."""
    if not directory.is_dir():
        raise SystemExit(f"{directory} not found: run `apt-get install wordnet-base` first")
    texts: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (directory / f"data.{pos}").read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            gloss = line.split("|", 1)[1]
            texts.extend(" ".join(q.split()) for q in re.findall(r'"([^"]{8,})"', gloss))
    return texts


def split_docs(docs: list[str], val_fraction: float = 0.05) -> tuple[list[str], list[str]]:
    """Stable train/validation split by hash of the text."""
    train, val = [], []
    for doc in docs:
        bucket = int(hashlib.md5(doc.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if bucket < val_fraction else train).append(doc)
    return train, val


def train_tokenizer(train_docs: list[str], out: Path, vocab_size: int) -> LlamaTokenizer:
    """Train a sentencepiece BPE model and wrap it as a transformers tokenizer saved in ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(train_docs), encoding="utf-8")
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), model_type="bpe", vocab_size=vocab_size,
            byte_fallback=True, character_coverage=0.9995, pad_id=PAD_ID, unk_id=UNK_ID,
            bos_id=BOS_ID, eos_id=EOS_ID, pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>",
            eos_piece="</s>", num_threads=1, minloglevel=2, max_sentence_length=4096,
        )
        convert_dir = Path(tmp) / "convert"
        convert_dir.mkdir()
        (convert_dir / "tokenizer.model").write_bytes(Path(str(prefix) + ".model").read_bytes())
        # transformers converts the sentencepiece model into a fast tokenizer (tokenizer.json)
        tokenizer = LlamaTokenizer.from_pretrained(convert_dir, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                                   eos_token="</s>", add_bos_token=True,
                                                   legacy=False)
        tokenizer.model_max_length = 256
        out.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(out)
        (out / "tokenizer.model").write_bytes(Path(str(prefix) + ".model").read_bytes())
    return tokenizer


def encode_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """Concatenate ``<s> doc </s>`` for every document into one 1-D id tensor."""
    ids: list[int] = []
    for start in range(0, len(docs), 2048):
        for row in tokenizer(docs[start:start + 2048], add_special_tokens=False)["input_ids"]:
            ids.extend([BOS_ID, *row, EOS_ID])
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, data: torch.Tensor, block: int, batch: int) -> float:
    """Mean next-token loss (nats/token) over all full blocks of ``data``."""
    model.eval()
    n_blocks = (len(data) - 1) // block
    total, count = 0.0, 0
    for start in range(0, n_blocks, batch):
        idx = torch.arange(start, min(start + batch, n_blocks)) * block
        x = torch.stack([data[i:i + block] for i in idx])
        loss = model(input_ids=x, labels=x).loss
        total += loss.item() * len(idx)
        count += len(idx)
    model.train()
    return total / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("text_envs/assets/tiny-lm"))
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=192)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block", type=int, default=128, help="training context length")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--max-minutes", type=float, default=35.0, help="stop training after this wall time")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    docs = read_fortunes() + read_wordnet_examples()
    train_docs, val_docs = split_docs(docs)
    print(f"corpus: {len(docs)} documents ({len(train_docs)} train / {len(val_docs)} validation)")
    tokenizer = train_tokenizer(train_docs, args.out, args.vocab_size)
    tokenizer.model_max_length = 10**9  # the corpus is encoded as one stream, then cut into blocks
    train_ids, val_ids = encode_stream(tokenizer, train_docs), encode_stream(tokenizer, val_docs)
    print(f"tokens: {len(train_ids)} train / {len(val_ids)} validation, vocab {len(tokenizer)}")

    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=args.n_embd, n_layer=args.n_layer,
                        n_head=args.n_head, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                        tie_word_embeddings=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: GPT-2 {args.n_layer} layers x {args.n_embd} wide, {n_params / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = 100

    def lr_at(step: int, minutes: float) -> float:
        """Linear warm-up, then cosine decay over whichever budget (steps or minutes) runs out first."""
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = min(1.0, max((step - warmup) / max(1, args.max_steps - warmup), minutes / args.max_minutes))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    start, best = time.time(), float("inf")
    history: list[dict[str, float]] = []
    for step in range(args.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, (time.time() - start) / 60)
        offsets = torch.randint(0, len(train_ids) - args.block - 1, (args.batch,))
        x = torch.stack([train_ids[o:o + args.block] for o in offsets])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        minutes = (time.time() - start) / 60
        last = step == args.max_steps - 1 or minutes > args.max_minutes
        if step % args.eval_every == 0 or last:
            val = evaluate(model, val_ids, args.block, 64)
            history.append({"step": step, "train_loss": loss.item(), "val_loss": val, "minutes": minutes})
            print(f"step {step:5d}  train {loss.item():.3f}  val {val:.3f}  ({minutes:.1f} min)", flush=True)
            if val < best:
                best = val
                model.save_pretrained(args.out)
        if last:
            break

    model = AutoModelForCausalLM.from_pretrained(args.out)
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    tokenizer.model_max_length = 10**9
    final_val = evaluate(model, val_ids, args.block, 64)
    (args.out / "training_summary.json").write_text(json.dumps(
        {"val_loss_nats_per_token": round(final_val, 4), "parameters": n_params, "train_tokens": len(train_ids),
         "val_tokens": len(val_ids), "history": history, "args": {k: str(v) for k, v in vars(args).items()}},
        indent=2) + "\n")
    print(f"final held-out loss: {final_val:.3f} nats/token")
    model.eval()
    for prompt in ["The meaning of life is", "A good friend", "Never trust a", "She was"]:
        enc = tokenizer(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=25, do_sample=True, top_k=40, temperature=0.8,
                             pad_token_id=tokenizer.pad_token_id)
        print("sample:", tokenizer.decode(out[0], skip_special_tokens=True))


if __name__ == "__main__":
    main()
