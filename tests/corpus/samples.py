"""Handmade few-line sample books in the upstream classics layout (invented sentences, written as GBK bytes)."""

from __future__ import annotations

from pathlib import Path

WRAP = 30
"""Characters per hard-wrapped line in the samples (upstream wraps at ~50)."""


def wrap(paragraph: str, width: int = WRAP) -> list[str]:
    """Hard-wrap a paragraph the way upstream does: fixed-width lines, each with a trailing space."""
    return [paragraph[i:i + width] + " " for i in range(0, len(paragraph), width)]


def classic(title: str, sections: list[tuple[str, list[str]]], author: str = "某氏", dynasty: str = "清",
            year: str = "公元1800年", prefix: str = "属性：") -> str:
    """Text of a book in the upstream layout; `sections` = [(toc\\title, [paragraph, ...])]; a paragraph that
    starts with '=' is written as is (one line, e.g. an ingredient list or a standalone note)."""
    lines = ["", f"<篇名>{title}", f"书名：{title}", f"作者：{author}  ", f"朝代：{dynasty}  ", f"年份：{year}  ",
             "", "", ""]
    for heading, paras in sections:
        toc, _, name = heading.rpartition("|")
        lines += [f"<目录>{toc}", "", f"<篇名>{name}", ""]
        first = True
        for p in paras:
            body = [p[1:] + " "] if p.startswith("=") else wrap(p)
            if first:
                body[0] = prefix + body[0]
                first = False
            lines += body
        lines += ["", "", ""]
    return "\n".join(lines) + "\n"


SHANGHAN = [
    ("卷一|辨寒热篇", [
        "凡人初病，先辨寒热。寒者脉迟而口不渴，热者脉数而口渴，此其大略也。然寒热之间，又有真假之别，学者不可不细察之。",
        "=甘草（二钱） 生姜（三片） 大枣（二枚） ",
        "上三味，以水二升，煮取一升，去滓温服。服后啜热粥一碗，以助药力，令微似汗出，不可令如水流漓。",
    ]),
    ("卷一|辨虚实篇", [
        "虚者正气不足，实者邪气有余。虚则补之，实则泻之，此不易之法也。若虚实错杂，当先其所急，后其所缓，不可执一。",
        "病人身热而恶寒者，表未解也；不恶寒而反恶热者，邪已入里也。表里之辨，全在于此，临证之时，宜详审焉。",
    ]),
]

COMMENTARY = [
    ("卷上|释寒热", [
        "凡人初病，先辨寒热。寒者脉迟而口不渴，热者脉数而口渴，此其大略也。然寒热之间，又有真假之别，学者不可不细察之。",
        "注曰：此言寒热为辨证之始。\\x一本作先辨表里\\x盖寒热既明，则治法可定，此余数十年所验者也。",
    ]),
    ("卷上|释虚实", [
        "虚者正气不足，实者邪气有余。虚则补之，实则泻之，此不易之法也。若虚实错杂，当先其所急，后其所缓，不可执一。",
        "注曰：虚实二字，为治病之纲领。医者能于此处用心，则思过半矣。世人多忽之，故特表而出之，以告来者。",
    ]),
]

HERBS = [
    ("卷一\\草部|黄芪", [
        "味甘，性微温，无毒。主补中益气，固表止汗，托疮生肌。凡气虚乏力，久泻脱肛，自汗盗汗者，皆可用之。",
        "=\\x按\\x ",
        "今人多以蜜炙用之，取其甘缓补中之意。若欲走表，则生用为宜。产于北地者，皮黄肉白，质坚而绵，为上品。",
    ]),
    ("卷一\\草部|当归", [
        "味甘辛，性温，无毒。主补血活血，调经止痛，润肠通便。头止血而尾破血，身则养血，全用则和血。",
        "@@@",
        "凡血虚萎黄，眩晕心悸，月经不调者，皆可用之。然湿盛中满，大便溏泄者，不宜服也，用者审之。",
    ]),
]

CASES = [
    ("|医案一", [
        "张某，年四十，病发热恶寒，头痛身疼，脉浮而紧。余诊之曰：此伤于寒也，宜发其汗。与麻黄汤一剂，覆被取汗，热退而安。",
    ]),
    ("|医案二", [
        "李某之妻，年三十余，病腹痛下利，日十余行，脉沉而迟，手足不温。余曰：此脾阳不振也。与理中汤三剂，利止痛除，饮食渐进。",
    ]),
]


def write_gbk(path: Path, text: str, crlf: bool = False) -> Path:
    """Write `text` as GBK bytes (what upstream ships), optionally with CRLF line ends (as 10 upstream files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((text.replace("\n", "\r\n") if crlf else text).encode("gbk"))
    return path


def make_library(root: Path) -> dict[str, Path]:
    """A small source directory: four GBK classics (one embeds another), a Markdown text, a JSONL file, and bad
    inputs (binary, empty, unknown encoding, unsupported type)."""
    files = {
        "shanghan": write_gbk(root / "001-试伤寒论.txt", classic("试伤寒论", SHANGHAN, dynasty="东汉", year="公元200年")),
        "commentary": write_gbk(root / "002-注解试伤寒论.txt", classic("注解试伤寒论", COMMENTARY, dynasty="金",
                                                                year="公元1144年")),
        "herbs": write_gbk(root / "003-试药本草.txt", classic("试药本草", HERBS, dynasty="明", year="公元1578年",
                                                           prefix="内容：")),
        "cases": write_gbk(root / "904-试诊医案.txt", classic("试诊医案", CASES, dynasty="清", year="公元1850年"),
                           crlf=True),
    }
    md = root / "textbook.md"
    md.write_text("# 试编讲义\n\n## 第一章 阴阳\n\n阴阳者，天地之道也，万物之纲纪，变化之父母。"
                  "人生有形，不离阴阳，故治病必求于本，本者，阴阳是也。\n\n"
                  "## 第二章 五行\n\n五行者，木火土金水也。木生火，火生土，土生金，金生水，水生木，"
                  "循环无端，生生不息，此五行相生之序也。\n", encoding="utf-8")
    files["md"] = md
    js = root / "web.jsonl"
    js.write_text('{"text": "养生之道，贵在有恒。饮食有节，起居有常，不妄作劳，则形与神俱，而尽终其天年。", '
                  '"title": "试养生说", "section": "总论", "dynasty": "清"}\n'
                  '{"text": "四时之气，春生夏长，秋收冬藏。顺之则安，逆之则病，故善养生者，必顺四时而适寒暑。", '
                  '"title": "试养生说", "section": "四时"}\n', encoding="utf-8")
    files["jsonl"] = js
    files["binary"] = root / "005-坏文件.txt"
    files["binary"].write_bytes(b"\x00\x01\x02PK\x03\x04" * 64)
    files["empty"] = root / "006-空文件.txt"
    files["empty"].write_bytes(b"")
    files["unknown"] = root / "007-乱码.txt"
    files["unknown"].write_bytes(b"\x80\x80abc\xff\x80" * 200)
    files["pdf"] = root / "scan.pdf"
    files["pdf"].write_bytes(b"%PDF-1.4 not really")
    return files
