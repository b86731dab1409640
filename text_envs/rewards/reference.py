"""``reference``: overlap of the completion with reference texts (ROUGE-L, BLEU or chrF)."""

from __future__ import annotations

import numpy as np

from text_envs.errors import ConfigError, MissingDependencyError
from text_envs.rewards.base import TargetLookup, Targets, register_reward

__all__ = ["ReferenceReward"]

_METRICS = {"rougel": "rougeL", "rouge-l": "rougeL", "rouge_l": "rougeL", "bleu": "bleu", "chrf": "chrf"}


class ReferenceReward:
    """Similarity of the completion to the prompt's reference texts, in ``[0, 1]``.

    * ``metric="rougeL"`` (default): ROUGE-L F-measure (longest common subsequence of words,
      ``F = 2PR / (P + R)``) from ``rouge_score.rouge_scorer``, the best over the references;
      its tokenizer lowercases and keeps ASCII letters/digits only, and ``use_stemmer`` applies
      the Porter stemmer.
    * ``metric="bleu"``: ``sacrebleu.sentence_bleu(completion, references).score / 100``
      (sentence BLEU with exponential smoothing; several references are used jointly, as BLEU
      defines it).
    * ``metric="chrf"``: ``sacrebleu.sentence_chrf(completion, references).score / 100``
      (character n-gram F-score, beta = 2; the best-matching reference counts).

    1.0 means identical to a reference, 0.0 no overlap. (sacreBLEU can return 100.00000000000004
    for an exact match; that floating-point rounding is capped at 1.0.)

    Args:
        targets: mapping prompt -> list of reference texts, or one list for every prompt.
        metric: ``"rougeL"``, ``"bleu"`` or ``"chrf"`` (case-insensitive); other -> ConfigError.
        use_stemmer: Porter-stem words before ROUGE-L (default True; ROUGE-L only).
    """

    name = "reference"
    needs_targets = True

    def __init__(self, targets: Targets, metric: str = "rougeL", use_stemmer: bool = True) -> None:
        key = _METRICS.get(metric.lower()) if isinstance(metric, str) else None
        if key is None:
            raise ConfigError(f"unknown metric={metric!r} for reward 'reference'; expected one of 'rougeL', 'bleu', 'chrf'")
        self.metric = key
        self.use_stemmer = bool(use_stemmer)
        self.targets = TargetLookup(targets, self.name)
        if key == "rougeL":
            try:
                from rouge_score import rouge_scorer
            except ImportError as exc:
                raise MissingDependencyError("metric='rougeL' needs rouge-score: pip install rouge-score") from exc
            self._rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=self.use_stemmer)
        else:
            try:
                import sacrebleu
            except ImportError as exc:
                raise MissingDependencyError(f"metric={key!r} needs sacrebleu: pip install sacrebleu") from exc
            self._sacre = sacrebleu.sentence_bleu if key == "bleu" else sacrebleu.sentence_chrf

    def _score(self, completion: str, references: tuple[str, ...]) -> float:
        if self.metric == "rougeL":
            return max(float(self._rouge.score(ref, completion)["rougeL"].fmeasure) for ref in references)
        return min(1.0, float(self._sacre(completion, list(references)).score) / 100.0)

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        refs = self.targets.for_batch(prompts)
        return np.array([self._score(c, r) for c, r in zip(completions, refs)], dtype=np.float64)

    def __repr__(self) -> str:
        return f"ReferenceReward(metric={self.metric!r}, targets={self.targets!r})"


register_reward(
    "reference",
    ReferenceReward,
    description="ROUGE-L / BLEU / chrF of the completion against the prompt's references (targets=), in [0, 1]",
    needs_targets=True,
)
