"""Chinese prompts for the teacher: knowledge-guided self-QA over one passage, and the optional grounding judge."""

from __future__ import annotations

from qihuang.instruct.records import Pair, Passage

PROMPT_VERSION = "selfqa-v1"
"""Bumped whenever the prompt text changes (it is part of the cache key through the messages anyway)."""

PASSAGE_OPEN = "<<<原文"
PASSAGE_CLOSE = "原文>>>"

TEACHER_TYPES = ("原文释义", "白话翻译", "出处", "名词概念", "方剂组成", "药物性味", "药物主治", "病机证候", "治法",
                 "比较辨析", "追问")

SYSTEM = (
    "你是一位精通中医古籍的学者，熟悉《黄帝内经》《伤寒论》《神农本草经》等典籍。"
    "你将阅读一段古籍原文，同时扮演提问的学生和作答的老师，编写以原文为依据的问答。"
)

USER = """下面是一段中医古籍原文。
书名：《{book}》{who}
篇名：{section}
类别：{category}
{open}
{text}
{close}

请围绕这段原文编写 {n} 组逻辑上相互关联的问答，要求：
1. 每个问题都能仅凭这段原文（及书名、篇名）回答；答案必须忠实于原文，不得编造原文没有的药物、方剂、剂量或观点；
2. 问题类型尽量多样，可选：{types}；
3. 后面的问题可以承接前面的问答继续追问（类型记为“追问”）；
4. 答案用通顺的现代汉语，必要时引用原文；每组给出 evidence：逐字摘录支持答案的原文片段；
5. 只输出一个 JSON 数组，不要输出其他文字，格式如下：
[{{"type": "名词概念", "question": "……", "answer": "……", "evidence": "……"}}]"""

JUDGE_SYSTEM = "你是严谨的中医古籍审校者，只根据给定原文判断答案是否有依据。"

JUDGE_USER = """原文（《{book}》{section}）：
{open}
{text}
{close}

问题：{question}
答案：{answer}

这个答案的内容是否都能在上面的原文中找到依据？只输出 JSON：{{"supported": true 或 false, "reason": "简短理由"}}"""


def selfqa_messages(p: Passage, n: int) -> list[dict[str, str]]:
    """Chat messages asking the teacher for `n` grounded question–answer pairs about passage `p`."""
    who = f"（{p.dynasty}·{p.author}）" if p.dynasty or p.author else ""
    user = USER.format(book=p.book, who=who, section=p.section, category=p.category, open=PASSAGE_OPEN,
                       text=p.text, close=PASSAGE_CLOSE, n=n, types="、".join(TEACHER_TYPES))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def judge_messages(pair: Pair, p: Passage) -> list[dict[str, str]]:
    """Chat messages asking the teacher whether `pair`'s answer is supported by passage `p`."""
    user = JUDGE_USER.format(book=p.book, section=p.section, open=PASSAGE_OPEN, text=p.text, close=PASSAGE_CLOSE,
                             question=pair.question, answer=pair.answer)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]
