"""A fake LLM for the tests: a FakeLLMServer responder that answers the generator's three steps like a small model.

It finds the step from the system prompt, the ``[S1] text`` segments and the requested number of pairs in the user
message, and answers with well-formed JSON built from them (listing artifacts first when the QA prompt asks for
them). Token counts are estimated as characters / 4 of the request and the answer, so cost figures scale like a real
server's. Faults (a bad segment id, a non-standalone question, a duplicate, 500s, an answer cut off at max_tokens
when a request shows more than one segment) are switched on per chunk by a snippet of the chunk's text, so a test
can break exactly one unit.
"""

from __future__ import annotations

import re
import threading
import time
import zlib

from embed_pipeline.stages.sdg.llm.prompts import ARTIFACTS_MARKER, JUDGE_MARKER, QA_MARKER
from embed_pipeline_tests.fake_llm_server import Reply, reply_json, reply_status, reply_text

QUERY_TYPES = ["multi_hop", "structural", "contextual"]
REASONING_TYPES = ["factual", "relational", "inferential", "temporal", "procedural", "causal"]
WH = ["What", "How", "Why", "Which", "When", "Where", "Who"]


def expected_score(question: str) -> int:
    """What the fake judge gives a question (3-10, deterministic)."""
    return 3 + zlib.crc32(question.encode("utf-8")) % 8


def step_of(request: dict) -> str:
    """Which generator step a request is: 'artifacts', 'qa' or 'judge'."""
    system = request["messages"][0]["content"]
    for marker, name in ((ARTIFACTS_MARKER, "artifacts"), (QA_MARKER, "qa"), (JUDGE_MARKER, "judge")):
        if marker in system:
            return name
    raise AssertionError(f"unknown step: {system[:80]}")


def user_message(request: dict) -> str:
    return request["messages"][1]["content"]


class FakeLLM:
    """A responder that answers the three steps from what is in the request."""

    def __init__(self, faults: dict[str, str] | None = None, delay_s: float = 0.0) -> None:
        self.faults = faults or {}
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, request: dict) -> Reply:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            reply = self.answer(request)
            if reply.status == 200 and reply.content is not None:
                sent = sum(len(str(m.get("content") or "")) for m in request["messages"])
                reply.prompt_tokens, reply.completion_tokens = max(1, sent // 4), max(1, len(reply.content) // 4)
            return reply
        finally:
            with self.lock:
                self.in_flight -= 1

    def active(self, user: str) -> set[str]:
        return {fault for snippet, fault in self.faults.items() if snippet in user}

    def answer(self, request: dict) -> Reply:
        step, user = step_of(request), user_message(request)
        faults = self.active(user)
        segments = re.findall(r"^\[(S\d+)\] (.*)$", user, re.M)
        assert segments, "every request shows [S1] segments"
        if "truncate" in faults and len(segments) > 1 and step in ("qa", "judge"):
            return reply_text('{"pairs": [{"question": "What is', finish_reason="length")
        if "server_error" in faults or (step == "judge" and "judge_error" in faults):
            return reply_status(500, message="scripted overload")
        if step == "artifacts":
            return reply_json(self.artifacts(segments))
        if step == "qa":
            answer = {"pairs": self.pairs(user, segments, faults)}
            if '{"artifacts":' in user:
                answer = {"artifacts": self.artifacts(segments), **answer}
            return reply_json(answer)
        reasked = len(request["messages"]) > 2  # the client added its answer and a correction
        return reply_json({"scores": self.scores(user, faults - {"judge_partial"} if reasked else faults)})

    @staticmethod
    def artifacts(segments: list[tuple[str, str]]) -> dict:
        first = [" ".join(text.split()[:2]) for _, text in segments]
        return {
            "key_concepts": first + ["extra concept", "another one"],
            "entities": first,
            "technical_terms": [],
            "identifiers": [w for _, t in segments for w in re.findall(r"\w+\(\)", t)],
            "relationships": [],
            "processes": [],
            "insights": ["a short insight"],
        }

    def pairs(self, user: str, segments: list[tuple[str, str]], faults: set[str]) -> list[dict]:
        n = int(re.search(r"Write exactly (\d+) question-answer pairs", user).group(1))
        query_part, reasoning_part = user.split("\nReasoning types", 1)
        # The types the prompt asks for, each as often as its count, in the order listed (what a model should do).
        query_types = [t for t, k in re.findall(r"^- (\w+) \((\d+)\):", query_part, re.M) for _ in range(int(k))]
        reasoning = [t for t, k in re.findall(r"^- (\w+) \((\d+)\):", reasoning_part, re.M) for _ in range(int(k))]
        query_types, reasoning = query_types or QUERY_TYPES, reasoning or REASONING_TYPES
        out = []
        for j in range(n):
            sid, text = segments[j % len(segments)]
            words = re.findall(r"[A-Za-z_][\w]*", text)
            offset = (5 * j) % max(1, len(words) - 4)
            topic = " ".join(words[offset : offset + 4])
            query_type = query_types[(j * len(query_types)) // n % len(query_types)]
            multi = len(segments) > 1 and query_type == "multi_hop"
            cited = list(dict.fromkeys([sid, segments[(j + 1) % len(segments)][0]])) if multi else [sid]
            out.append(
                {
                    "question": f"{WH[j % len(WH)]} does {topic} mean for {words[0]} users?",
                    "answer": f"It concerns {topic}.",
                    "query_type": query_type,
                    "reasoning_type": reasoning[(j * len(reasoning)) // n % len(reasoning)],
                    "segment_ids": cited,
                    "hop_count": len(cited),
                    "hop_contexts": [" ".join(t.split()[:6]) for s, t in segments if s in cited],
                }
            )
        if "bad_segment" in faults:
            out[0]["segment_ids"] = ["S9"]
        if "not_standalone" in faults:
            out[1]["question"] = "According to the text, " + out[1]["question"]
        if "duplicate" in faults:
            out[2]["question"] = out[0]["question"]
        if "rephrase" in faults:
            for pair in out:
                pair["question"] = pair["question"].replace(" users?", " users exactly?")
        if "bad_type" in faults:
            out[0]["query_type"] = "Multi-Hop"
            out[1]["query_type"] = "weird_type"
        return out

    def scores(self, user: str, faults: set[str]) -> list[dict]:
        questions = re.findall(r"^Pair (\d+):\nQuestion: (.*)$", user, re.M)
        scores = []
        for index, question in questions:
            s = expected_score(question)
            scores.append(
                {"index": int(index), "relevance": s, "accuracy": s, "context_support": s, "clarity": s, "overall": s}
            )
        if "judge_partial" in faults or "judge_short" in faults:  # short on the first ask / on every ask
            scores = scores[:-1]
        return scores
