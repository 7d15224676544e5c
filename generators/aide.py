"""AIDE (arXiv 2412.06136): multi-hop, attribute-guided synthesis.

For each node (a seed first), the LLM names its topic and key attributes; for
each attribute x operation (reasoning, concretizing, constraining) it writes a
new instruction, and a persona branch adds children written from the point of
view of people relevant to the seed. Children become the next hop's parents.
From hop 2 on the original seed is in every prompt (the residual connection),
so deep hops stay on task. Each child is judged for relevance to the seed (and,
for persona children, for difference from its parent) and rewritten with the
critique when it falls short (filters/judge.py).

The budget bounds LLM calls: each batch of children has its calls set aside up
front (write + judge + what a record costs downstream: its answer, and the quality
gate's judgement when that is on); what a child dropped early did not spend comes
back when its batch is done, and the hop writes more children with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
from dataclasses import dataclass
from itertools import chain, zip_longest
from typing import Annotated, Literal

from pydantic import BaseModel, Field, create_model

from germinate.budget import Allowance, Reservation
from germinate.executor import Emit
from germinate.generators import STAGE, Strategy, fault, parse_instruction
from germinate.judge import JUDGE, Rubric, Verdict, reflect
from germinate.llm import Request, Result
from germinate.prompts import Prompt, combine_hashes
from germinate.records import Record, record_id, show
from germinate.settings import DATA_DIR, Section
from germinate.stage import Context

PERSONAS_FILE = DATA_DIR / "personas.txt"


TOPIC_CHARS, ATTRIBUTE_CHARS = 40, 32


@functools.cache
def topic_and_attributes(count: int) -> type[BaseModel]:
    """The extraction schema. Bounded lengths keep a small model's JSON inside its max_tokens."""
    return create_model(
        "TopicAndAttributes",
        topic=(str, Field(max_length=TOPIC_CHARS, description="a few words")),
        attributes=(list[Annotated[str, Field(max_length=ATTRIBUTE_CHARS)]], Field(min_length=1, max_length=count)),
    )


EXTRACT = Prompt(
    "Read this task and name its topic in a few words. Then list up to $count key attributes "
    "of the task: the skills, entities, constraints or formats it involves, two or three words each.\n\n"
    "Task:\n$task"
)
SYNTHESIZE = Prompt(
    "Topic: $topic\nAttribute: $attribute\n$residual\nTask:\n$task\n\n"
    "Write one new task for an AI assistant. $guide The new task must stay on the same topic, "
    "be self-contained (include any data it needs) and be different from the task above. "
    "Write only the new task, in at most three sentences."
)
PERSONA = Prompt(
    "Topic: $topic\n$residual\nTask:\n$task\n\n"
    "Write one new task on this topic that $persona would ask an AI assistant. Make it specific "
    "to their situation, self-contained, and different from the task above. Write only the new task, "
    "in at most three sentences."
)
REWRITE = Prompt(
    "Original seed task:\n$seed\n\nDraft of a new task:\n$draft\n\nCritique of the draft: $critique\n\n"
    "Rewrite the draft so that it answers the critique and stays on the seed task's topic. "
    "Write only the improved task, in at most three sentences."
)
OPERATION_GUIDES = {
    "reasoning": "Make it require more steps of reasoning about the attribute.",
    "concretizing": "Make the attribute more specific and concrete: real names, numbers or details.",
    "constraining": "Add one clear constraint or requirement related to the attribute.",
}
RELEVANCE = Rubric(
    "relevance",
    {"relevance": "the new task keeps the purpose and topic of the seed task and is clear and answerable"},
)
PERSONA_RELEVANCE = Rubric(
    "persona",
    {
        "relevance": "the new task keeps the purpose and topic of the seed task and is clear and answerable",
        "difference": "the new task is clearly different from its parent task, not a paraphrase of it",
    },
)


@dataclass
class Job:
    parent: Record
    topic: str
    operation: str  # one of OPERATION_GUIDES, or "persona"
    attribute: str | None = None
    persona: str | None = None  # filled in for a persona slot before its child is written
    slot: int = 0


def _float_or_none(value: int | None) -> float | None:
    return None if value is None else float(value)


@functools.cache
def personas() -> tuple[str, ...]:
    return tuple(line.strip() for line in PERSONAS_FILE.read_text().splitlines() if line.strip())


Operation = Literal["reasoning", "concretizing", "constraining"]


class AIDEConfig(Section):
    hops: int = Field(2, ge=1, le=10, description="K: depth of the synthesis tree below each seed",
                      json_schema_extra={"flag": "--hops"})  # germinate run --hops 3
    attributes: int = Field(2, ge=1, le=10, description="N: key attributes extracted per node")
    operations: list[Operation] = Field(
        default_factory=lambda: ["reasoning", "concretizing", "constraining"], min_length=1
    )
    personas: int = Field(1, ge=0, le=10, description="persona children per node")
    reflection_threshold: float = Field(5.0, ge=1, le=10, description="judge score (1-10) to pass")
    reflection_tries: int = Field(1, ge=0, le=5, description="R: rewrites of a failing instruction")
    on_reflection_fail: Literal["drop", "keep"] = "drop"


class AIDE(Strategy):
    name = "aide"
    default_share = 1.0
    section = "aide"
    Settings = AIDEConfig
    prompts_hash = combine_hashes(EXTRACT.hash, SYNTHESIZE.hash, PERSONA.hash, REWRITE.hash, JUDGE.hash)

    def __init__(self, context: Context, record_cost: int):
        super().__init__(context, record_cost)
        self.child_cost = 2 + record_cost  # write + first judgement + downstream
        self.unit_cost = 1 + self.child_cost  # a node's extraction and one child
        self.persona_slots = min(self.settings.personas, len(personas()))
        self.persona_pools: dict[str, list[str]] = {}  # seed id -> the personas nearest to it

    def _request(
        self, prompt: Prompt, hop: int, schema: type[BaseModel] | None = None, max_tokens: int | None = None, /,
        **values: object,
    ) -> Request:
        return self.request(prompt, self.random_seed + hop, schema, max_tokens, **values)

    async def _relevant_personas(self, seed: Record) -> list[str]:
        """The personas of data/personas.txt closest to the seed in embedding space: a pool a little
        larger than a node's persona children, from which each node samples them."""
        if seed.id not in self.persona_pools:  # the same at every hop of the seed's tree
            found = await self.vectors([show(seed), *personas()])
            similarity = found[1:] @ found[0]
            self.persona_pools[seed.id] = [
                personas()[i] for i in similarity.argsort()[::-1][: 2 * self.settings.personas + 2]
            ]
        return self.persona_pools[seed.id]

    async def grow(self, seed: Record, allowance: Allowance, emit: Emit) -> None:
        """The seed's tree, hop by hop; each hop's children are handed on when they are judged."""
        rng = random.Random(f"{self.random_seed}:{seed.id}:{seed.instruction}")
        frontier = [seed]
        for hop in range(1, self.settings.hops + 1):
            # An even share of what is left for each remaining hop, but never less than one
            # node's extraction and one child: a small budget buys a shallow tree, not nothing.
            hops_left = self.settings.hops - hop + 1
            hop_calls = max(allowance.calls // hops_left, min(allowance.calls, 1 + self.child_cost))
            hop_records = max(allowance.records // hops_left, min(allowance.records, 1))
            rng.shuffle(frontier)
            frontier = frontier[: hop_calls // (1 + self.child_cost)]
            if not frontier or hop_records == 0:
                break
            later_hops = allowance.calls - hop_calls  # what this hop leaves to the next ones
            # A token is at least one character: the schema's bounds make the JSON always fit.
            extraction_tokens = 24 + TOPIC_CHARS + self.settings.attributes * (ATTRIBUTE_CHARS + 8)
            extractions = await self.llm.generate(
                [self._request(EXTRACT, hop, topic_and_attributes(self.settings.attributes), extraction_tokens,
                               count=self.settings.attributes, task=show(n)) for n in frontier]
            )
            jobs = self._plan(frontier, extractions, rng)
            frontier = []
            # A child dropped early gives back what it did not spend: the hop writes its nodes' next
            # children with it until it has its records, so a small budget is not left unspent.
            while len(frontier) < hop_records:
                count = min(len(jobs), (allowance.calls - later_hops) // self.child_cost, hop_records - len(frontier))
                if count <= 0:
                    if frontier or not later_hops:
                        break
                    later_hops = 0  # no child survived: there is no next hop to keep calls for
                    continue
                batch, jobs = jobs[:count], jobs[count:]
                # Set aside: the rewrites the judge asks for while the children are judged must not
                # take what the children kept will cost the later stages.
                with allowance.reserve(self.child_cost * count) as reserved:
                    frontier += await self._children(seed, hop, batch, reserved, emit)

    def _plan(self, nodes: list[Record], extractions: list[Result], rng: random.Random) -> list[Job]:
        """Every (attribute x operation) and persona child of each node, interleaved across nodes
        so that a budget cut keeps the tree broad. Persona children are slots here: who they are is
        looked up (by embedding) while the other children are already being written."""
        per_node = []
        for node, result in zip(nodes, extractions):
            if not result.ok:
                continue  # the node stays in the data; it just gets no children
            topic = result.parsed.topic.strip()
            # Unique attributes: a child's id is derived from (parent, operation, attribute).
            unique = dict.fromkeys(a.strip() for a in result.parsed.attributes if a.strip())
            attributes = list(unique)[: self.settings.attributes]
            jobs = [Job(node, topic, op, attribute=a) for a in attributes for op in self.settings.operations]
            jobs += [Job(node, topic, "persona", slot=k) for k in range(self.persona_slots)]
            rng.shuffle(jobs)
            per_node.append(jobs)
        return [job for job in chain.from_iterable(zip_longest(*per_node)) if job is not None]

    def _synthesis_request(self, seed: Record, hop: int, job: Job) -> Request:
        residual = f"Original seed task (keep its purpose):\n{show(seed)}\n" if hop >= 2 else ""
        values = dict(topic=job.topic, residual=residual, task=show(job.parent))
        if job.operation == "persona":
            return self._request(PERSONA, hop, persona=job.persona, **values)
        return self._request(SYNTHESIZE, hop, attribute=job.attribute, guide=OPERATION_GUIDES[job.operation], **values)

    async def _write_personas(self, seed: Record, hop: int, jobs: list[Job]) -> list[Result]:
        """Who each persona child speaks for is looked up by embedding (the model may still be loading
        at the start of a run), then the children are written."""
        if not jobs:
            return []
        pool = await self._relevant_personas(seed)
        draws = {}  # each node's draw is its own: the same whatever the budget cut
        for job in jobs:
            if job.parent.id not in draws:
                draws[job.parent.id] = random.Random(f"{self.random_seed}:{job.parent.id}:personas").sample(
                    pool, self.persona_slots)
            job.persona = draws[job.parent.id][job.slot]
        return await self.llm.generate([self._synthesis_request(seed, hop, job) for job in jobs])

    async def _children(self, seed: Record, hop: int, jobs: list[Job], reserved: Reservation, emit: Emit):
        """The attribute children, then the persona children (written meanwhile): each group judged,
        rewritten with the critique where it falls short, and handed on as soon as it is done. The
        groups draw on the calls set aside one after the other, so a rerun spends them in the same order."""
        parents = {job.parent.id: job.parent for job in jobs}
        plain = [job for job in jobs if job.operation != "persona"]
        chosen = [job for job in jobs if job.operation == "persona"]
        persona_results = asyncio.ensure_future(self._write_personas(seed, hop, chosen))
        try:
            kept = []
            for group, rubric in ((plain, RELEVANCE), (chosen, PERSONA_RELEVANCE)):
                if group is plain:
                    written = await self.llm.generate([self._synthesis_request(seed, hop, job) for job in group])
                else:
                    written = await persona_results
                judged, dropped = await self._judged(seed, hop, group, written, rubric, parents, reserved)
                emit(judged, dropped)
                kept += judged
            return kept
        finally:  # a failed shard stops it too
            persona_results.cancel()

    async def _judged(
        self, seed: Record, hop: int, jobs: list[Job], written: list[Result], rubric: Rubric,
        parents: dict[str, Record], reserved: Reservation,
    ) -> tuple[list[Record], list[Record]]:
        """The group's children as written, judged and rewritten: (kept, dropped)."""
        candidates, dropped = [], []
        for job, result in zip(jobs, written):
            child = self.written(
                result,
                id=record_id(job.parent.id, job.operation, job.attribute or job.persona),
                seed_id=seed.id,
                parent_id=job.parent.id,
                hop=hop,
                topic=job.topic,
                attribute=job.attribute,
                operation=job.operation,
                persona=job.persona,
            )
            problem = fault(child, result)
            if problem is None:
                candidates.append(child)
                continue
            dropped.append(child.dropped(STAGE, *problem))
        kept = []
        for state in await self._reflect(seed, candidates, rubric, parents, reserved):
            child, verdict = state.item, state.verdict
            if verdict is None:  # the judge failed, not the child: it stays, unjudged
                kept.append(dataclasses.replace(child, reflection_critique=f"not judged: {state.error}"))
                continue
            child = dataclasses.replace(
                child,
                reflection_score=float(verdict.scores["relevance"]),
                difference_score=_float_or_none(verdict.scores.get("difference")),
                reflection_critique=verdict.critique,
                reflection_tries=state.tries,
            )
            if not state.passed and self.settings.on_reflection_fail == "drop":
                detail = f"score {verdict.score:.1f} < {self.settings.reflection_threshold:g}: {verdict.critique}"
                dropped.append(child.dropped(STAGE, "low_reflection_score", detail))
            else:
                kept.append(child)
        return kept, dropped

    async def _reflect(
        self, seed: Record, children: list[Record], rubric: Rubric, parents: dict[str, Record], reserved: Reservation
    ):
        def context(child: Record) -> str:
            text = f"Seed task:\n{show(seed)}\n\n"
            if rubric is PERSONA_RELEVANCE:
                text += f"Parent task the new task was derived from:\n{show(parents[child.parent_id])}\n\n"
            return text + f"New task:\n{show(child)}"

        def rewrite(child: Record, verdict: Verdict) -> Request:
            return self._request(REWRITE, child.hop, seed=show(seed), draft=show(child), critique=verdict.critique)

        def apply(child: Record, result: Result) -> Record:
            return dataclasses.replace(child, instruction=parse_instruction(result.text) or child.instruction)

        return await reflect(
            self.llm,
            children,
            rubric=rubric,
            show=context,
            rewrite=rewrite,
            apply=apply,
            threshold=self.settings.reflection_threshold,
            tries=self.settings.reflection_tries,
            take=reserved.extend,
        )
