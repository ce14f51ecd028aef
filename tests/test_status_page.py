"""The status page: what it says (parsed HTML), then how it looks in headless Chromium.

The Chromium check renders a fabricated city with two children, takes a screenshot and
finds, by colour, this node's box, each child's box below it (side by side), and each
child's line in the lag chart below those: a missing child or series fails it.
"""

from __future__ import annotations

import json
import struct
import subprocess
import urllib.request
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Cluster, Node, wait_until

from node.observe.page import NODE_COLOUR, SERIES_COLOURS, STATE_COLOURS, render_page
from node.quality.report import REPORT_FORMAT, WEIGHTS, flatten, overall, with_rollups

CHROMIUM = Path("/usr/bin/chromium")
START = 1_794_988_400.0  # unix seconds of the first lag sample: 2026-11-18 07:53:20 UTC
GENERATED_AT = "2026-11-18T09:33:20.000+00:00"  # START + 100 min

LONG_ERROR = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.32.1.4:7400: "
    "Connection refused <retry in 30 s>"
)


def child(code: str, name: str, state: str, **fields: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": name,
        "address": f"10.32.1.{code[-1]}:7400",
        "state": state,
        "checkpoint": 1200,
        "child_head": 1200,
        "lag": 0,
        "lag_seconds": 0.0,
        "last_pull": "2026-11-18T09:33:18+00:00",
        "rows_applied": 5400,
        "rows": 5000,
        "error": None,
        **fields,
    }


def entry(code: str, name: str, department: str, freshness: str, path: list[str]) -> dict[str, Any]:
    names = {"320000": "江苏省", "320100": "南京市", "320102": "玄武区", "320104": "秦淮区"}
    return {
        "code": code,
        "name": name,
        "department": department,
        "entity": "person",
        "status": "published",
        "version": 1,
        "update_frequency": "daily",
        "freshness": freshness,
        "path": [{"code": c, "name": names[c]} for c in path],
        "origin_node": path[-1],
        "published_at": "2026-11-01T08:00:00+00:00",
        "last_change_at": "2026-11-17T08:00:00+00:00",
    }


def lag_history(points: int = 20) -> dict[str, list[list[Any]]]:
    """Five-minute samples: 320102 keeps up within seconds; 320104 trails by minutes, then
    goes down and falls further behind (the lines never overlap, so both stay visible)."""
    steady, falling = [], []
    for i in range(points):
        t = START + i * 300
        steady.append([t, i % 3, float(i % 4)])
        behind = max(0, i - 8)
        falling.append([t, 20 + behind * 70, 240.0 + 60 * (i % 3) + behind * 280.0])
    return {"320102": steady, "320104": falling}


def make_view(history: dict[str, list[list[Any]]] | None = None) -> dict[str, Any]:
    node = {
        "code": "320100",
        "name": "南京市",
        "tier": "city",
        "serving": True,
        "listen": "0.0.0.0:7400",
        "head_seq": 98_765,
        "parents": [
            {"code": "320000", "acked_seq": 98_700, "last_seen": "2026-11-18T09:33:19+00:00"}
        ],
        "children": [
            child("320102", "玄武区", "streaming", lag=3, lag_seconds=1.2),
            child(
                "320104",
                "秦淮区",
                "down",
                checkpoint=400,
                child_head=1240,
                lag=840,
                lag_seconds=3305.0,
                last_pull="2026-11-18T08:38:15+00:00",
                error=LONG_ERROR,
            ),
        ],
        "entities": {"person": {"rows": 10_000, "by_link": {}}},
        "rows": {"person": 10_000, "legal_entity": 2_500},
        "catalog": {
            "own": {"draft": 1, "published": 1, "retired": 0},
            "freshness": {"fresh": 1, "late": 1, "stale": 1},
            "by_node": [
                {"code": "320100", "name": "南京市", "fresh": 1, "late": 0, "stale": 0},
                {"code": "320102", "name": "玄武区", "fresh": 0, "late": 1, "stale": 0},
                {"code": "320104", "name": "秦淮区", "fresh": 0, "late": 0, "stale": 1},
            ],
            "not_fresh": [],
            "standard_items": 2,
        },
        "recent_ingests": [
            {
                "batch_id": "b1",
                "entity": "person",
                "file": "people.csv",
                "inserted": 120,
                "updated": 4,
                "deleted": 0,
                "finished_at": "2026-11-18T09:30:00+00:00",
            }
        ],
    }
    catalog = [
        entry("320100-GA-001", "户籍人口信息", "公安局", "fresh", ["320100"]),
        entry(
            "320102-SC-002",
            "市场主体登记<script>alert(1)</script>",
            "市场监管局",
            "late",
            ["320100", "320102"],
        ),
        entry("320104-MZ-003", "婚姻登记信息", "民政局", "stale", ["320100", "320104"]),
    ]
    return {
        "node": node,
        "lag_history": lag_history() if history is None else history,
        "catalog": catalog,
        "generated_at": GENERATED_AT,
    }


class Page(HTMLParser):
    """Every element (tag, attributes, the ids of its open ancestors) and the page's text."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self.texts: list[str] = []
        self._open: list[tuple[str, str]] = []
        self.feed(document)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append((tag, values, [i for _, i in self._open if i]))
        if tag not in ("meta", "br", "img", "input", "link"):  # HTML's void elements
            self._open.append((tag, values.get("id", "")))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append((tag, values, [i for _, i in self._open if i]))

    def handle_endtag(self, tag: str) -> None:
        if any(t == tag for t, _ in self._open):
            while self._open.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())

    def find(self, tag: str, inside: str | None = None, **attrs: str) -> list[dict[str, str]]:
        return [
            values
            for t, values, ancestors in self.elements
            if t == tag
            and (inside is None or inside in ancestors)
            and all(values.get(k.rstrip("_").replace("_", "-")) == v for k, v in attrs.items())
        ]

    def by_id(self, element_id: str) -> dict[str, str]:
        found = [v for _, v, _ in self.elements if v.get("id") == element_id]
        assert len(found) == 1, f"expected one element with id {element_id!r}, found {found}"
        return found[0]


# ----- what the page says ------------------------------------------------------------------


def test_the_tree_shows_this_node_its_parent_and_each_child_with_its_state() -> None:
    page = Page(render_page(make_view()))
    page.by_id("node-self")
    assert page.by_id("parent-320000")["class"] == "parent"
    assert page.by_id("child-320102")["class"].split() == ["child", "state-streaming"]
    assert page.by_id("child-320104")["class"].split() == ["child", "state-down"]
    assert "320102 玄武区" in page.text and "320104 秦淮区" in page.text
    # The table gives each child's figures, the error in full.
    rows = [r["data-child"] for r in page.find("tr", inside="children-table") if "data-child" in r]
    assert rows == ["320102", "320104"]
    assert LONG_ERROR in page.text
    assert "streaming 流式同步" in page.text and "down 中断" in page.text
    assert "55 min 5 s" in page.text  # 320104's lag in time


def test_the_lag_chart_draws_one_line_per_child_with_a_legend() -> None:
    page = Page(render_page(make_view()))
    series = page.find("polyline", inside="lag-chart", class_="lag-series")
    assert [s["data-child"] for s in series] == ["320102", "320104"]
    for line in series:
        assert len(line["points"].split()) == 20
    legend = [g["data-child"] for g in page.find("g", inside="lag-chart", class_="legend-item")]
    assert legend == ["320102", "320104"]
    assert "延迟 lag (时间 time)" in page.text and "时间 time (UTC)" in page.text
    assert "08:00" in page.text  # an x tick: samples run 07:53:20 to 09:28:20 UTC


def test_the_chart_counts_changes_when_no_sample_has_seconds() -> None:
    history = {
        code: [[t, seq, None] for t, seq, _ in points] for code, points in lag_history().items()
    }
    page = Page(render_page(make_view(history)))
    assert len(page.find("polyline", inside="lag-chart", class_="lag-series")) == 2
    assert "延迟 lag (变更数 changes)" in page.text


def test_an_empty_history_says_there_are_no_samples_yet() -> None:
    for history in ({}, {"320102": [], "320104": [[START, None, None]]}):
        document = render_page(make_view(history))
        page = Page(document)
        assert "暂无数据" in page.text and "no samples yet" in page.text
        assert not page.find("polyline") and 'id="lag-chart"' not in document


def test_the_catalogue_shows_each_resource_with_its_freshness_and_path() -> None:
    page = Page(render_page(make_view()))
    rows = [r["data-resource"] for r in page.find("tr", inside="resources") if r]
    assert rows == ["320104-MZ-003", "320102-SC-002", "320100-GA-001"]  # stale, late, fresh
    badges = [b["class"] for b in page.find("span", inside="resources") if "badge" in b["class"]]
    assert badges == ["badge freshness-stale", "badge freshness-late", "badge freshness-fresh"]
    assert "南京市 320100 › 秦淮区 320104" in page.text
    assert "婚姻登记信息" in page.text and "民政局" in page.text and "每日 daily" in page.text
    per_node = [r["data-node"] for r in page.find("tr", inside="freshness-by-node") if r]
    assert per_node == ["320100", "320102", "320104"]


def test_user_text_is_escaped() -> None:
    document = render_page(make_view())
    page = Page(document)
    assert not page.find("script")
    assert "市场主体登记<script>alert(1)</script>" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "&lt;retry in 30 s&gt;" in document


def test_labels_are_bilingual_and_the_page_refreshes_itself() -> None:
    document = render_page(quality_view())
    page = Page(document)
    for zh, en in [
        ("节点树", "Place in the tree"),
        ("下级节点", "Children"),
        ("上级节点", "Parents"),
        ("同步延迟", "Lag over the last hours"),
        ("资源目录与鲜活度", "Catalogue and freshness"),
        ("各节点鲜活度", "Freshness per node"),
        ("数据质量与反馈", "Data quality and feedback"),
        ("各下级质量评分", "Quality scores per child"),
        ("完整性", "Completeness"),
        ("综合", "Overall"),
        ("待处理反馈", "Open feedback items"),
        ("待处理疑问数据", "Open discrepancies"),
    ]:
        assert f"{zh} {en}" in page.text, (zh, en)
    assert "not available yet" not in page.text  # data quality has landed
    assert "无待处理疑问数据 no open discrepancies" in page.text
    assert page.find("meta", http_equiv="refresh", content="30")
    assert GENERATED_AT in page.text
    assert "<script" not in document.lower()  # no JavaScript at all


def test_a_real_bare_node_renders(tmp_path: Path) -> None:
    """The shapes the CLI prints today, for a city with no children and one resource."""
    node = Node(tmp_path / "city", "320100").init()
    status = json.loads(node.cli("status", "--json").stdout)
    view = {"node": status, "lag_history": {}, "catalog": [], "generated_at": GENERATED_AT}
    page = Page(render_page(view))
    assert "南京市" in page.text and "无下级节点 no children" in page.text
    assert "无上级节点" in page.text and "暂无数据" in page.text
    assert "此视图不含质量报告" in page.text  # a view of the older shape still renders
    # The quality lines of status and the report as `quality report --json` prints it.
    view["quality"] = flatten(json.loads(node.cli("quality", "report", "--json").stdout))
    view["feedback"] = []
    page = Page(render_page(view))
    assert "暂无可评分的资源 no resources to score yet" in page.text
    assert "待处理 open: 0 · 已受理 acknowledged: 0 · 逾期 overdue: 0" in page.text
    assert "隔离 held in quarantine: 0" in page.text


# ----- how it looks in headless Chromium ---------------------------------------------------


def chromium(url: str, work: Path) -> tuple[np.ndarray, Page]:
    """`url` as headless Chromium draws it (pixels) and builds it (the DOM)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (./scripts/test installs it as root)")
    png = work / "status.png"
    common = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1280,2000",
    ]
    runs = [
        subprocess.Popen(
            [*common, f"--user-data-dir={work / 'profile-shot'}", f"--screenshot={png}", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ),
        subprocess.Popen(
            [*common, f"--user-data-dir={work / 'profile-dom'}", "--dump-dom", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
    ]
    try:
        outputs = [run.communicate(timeout=120) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err.decode(errors="replace")[-2000:]
    assert png.exists(), outputs[0][1].decode(errors="replace")[-2000:]
    return read_png(png), Page(outputs[1][0].decode())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[np.ndarray, Page]]:
    """The fabricated page (with quality scores and feedback items) in Chromium."""
    work = tmp_path_factory.mktemp("chromium")
    page = work / "status.html"
    page.write_text(render_page(quality_view()), encoding="utf-8")
    yield chromium(page.as_uri(), work)


def test_chromium_builds_the_tree_and_the_chart(rendered: tuple[np.ndarray, Page]) -> None:
    _, dom = rendered
    assert dom.by_id("child-320102")["class"].split() == ["child", "state-streaming"]
    assert dom.by_id("child-320104")["class"].split() == ["child", "state-down"]
    series = dom.find("polyline", inside="lag-chart", class_="lag-series")
    assert [s["data-child"] for s in series] == ["320102", "320104"]
    scores = [r["data-kind"] for r in dom.find("tr", inside="quality-scores") if "data-kind" in r]
    assert scores.count("rollup") == 4 and scores.count("pending") == 1
    assert len(dom.find("tr", inside="feedback", class_="overdue")) == 1
    assert not dom.find("b", inside="feedback")


def test_the_screenshot_shows_the_tree_and_each_childs_lag_line(
    rendered: tuple[np.ndarray, Page],
) -> None:
    image, _ = rendered
    height, width, _ = image.shape
    assert (height, width) == (2000, 1280)
    # Not blank: plenty of colours, and a good share of the page is not the background.
    background = np.all(image == image[-1, -1], axis=2).mean()
    packed = image.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    assert len(np.unique(packed)) > 100 and background < 0.95

    # The tree: this node's box, then one box per child below it, side by side, each in
    # its state's colour. Table badges are narrower than a box, so runs of 120 px
    # pick out the boxes only.
    node_top, node_span = box(image, NODE_COLOUR)
    streaming_top, streaming_span = box(image, STATE_COLOURS["streaming"])
    down_top, down_span = box(image, STATE_COLOURS["down"])
    assert node_top < streaming_top and abs(streaming_top - down_top) <= 2
    assert streaming_span[1] < down_span[0], "320102 is drawn left of 320104"
    assert node_span[0] < down_span[0] and streaming_span[1] < node_span[1]

    # The chart: each child's colour drawn as a line across most of the plot, below the tree.
    for colour in SERIES_COLOURS[:2]:
        ys, xs = np.nonzero(matches(image, colour))
        assert len(xs) > 400, f"too few pixels of series colour {colour}"
        assert ys.min() > streaming_top + 60
        assert xs.max() - xs.min() > 0.6 * width, f"series {colour} does not span the chart"
    assert not matches(image, SERIES_COLOURS[2]).any(), "a third series appeared"


def test_a_serving_city_shows_its_real_children_in_chromium(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The page a real city serves: one county streaming, one gone (killed), each in the
    tree in its state's colour and each with a line in the lag chart."""
    city = cluster.node("320100", "city")
    city.configure("http", lag_sample_seconds=0.3)
    xuanwu = cluster.node("320102", "xuanwu").start()
    qinhuai = cluster.node("320104", "qinhuai").start()
    city.start()
    for county in (xuanwu, qinhuai):
        city.cli("children", "add", county.code, county.address)
    address = city.fetch_status()["http"]

    def sampled() -> bool:
        """Three samples with a known lag per child (the first come before a pull)."""
        with urllib.request.urlopen(f"http://{address}/status.json", timeout=10) as reply:
            history = json.loads(reply.read())["lag_history"]
        known = {c: [p for p in history.get(c, []) if p[2] is not None] for c in history}
        return all(len(known.get(code, [])) >= 3 for code in ("320102", "320104"))

    wait_until(sampled, what="three lag samples per child")
    qinhuai.kill9()
    wait_until(
        lambda: [c["state"] for c in city.fetch_status()["children"]] == ["streaming", "down"],
        what="320104 down",
    )
    image, dom = chromium(f"http://{address}/", tmp_path)
    assert dom.by_id("child-320102")["class"].split() == ["child", "state-streaming"]
    assert dom.by_id("child-320104")["class"].split() == ["child", "state-down"]
    series = dom.find("polyline", inside="lag-chart", class_="lag-series")
    assert [s["data-child"] for s in series] == ["320102", "320104"]
    # The quality part comes from the node's report and feedback items: none raised here.
    assert "各下级质量评分 Quality scores per child" in dom.text
    assert "无待处理反馈 no open feedback items" in dom.text
    node_top, _ = box(image, NODE_COLOUR)
    streaming_top, streaming_span = box(image, STATE_COLOURS["streaming"])
    down_top, down_span = box(image, STATE_COLOURS["down"])
    assert node_top < streaming_top and abs(streaming_top - down_top) <= 2
    assert streaming_span[1] < down_span[0], "320102 is drawn left of 320104"
    # Both children usually sit at lag 0, so their lines overlap; each colour still shows
    # in the legend and the sample dots (the fabricated page checks the lines' extent).
    for colour in SERIES_COLOURS[:2]:
        assert matches(image, colour).sum() > 20, f"no lag series in {colour}"
    assert not matches(image, SERIES_COLOURS[2]).any(), "a third series appeared"


def matches(image: np.ndarray, colour: str, tolerance: int = 6) -> np.ndarray:
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return np.all(np.abs(image.astype(np.int16) - rgb) <= tolerance, axis=2)


def box(image: np.ndarray, colour: str, min_run: int = 120) -> tuple[int, tuple[int, int]]:
    """Top row and horizontal extent of the first solid band of `colour` (a box's header)."""
    mask = matches(image, colour)
    for y in range(mask.shape[0]):
        run = longest_run(mask[y])
        if run[1] - run[0] >= min_run:
            return y, run
    raise AssertionError(f"no box of colour {colour} in the screenshot")


def longest_run(row: np.ndarray) -> tuple[int, int]:
    padded = np.concatenate(([0], row.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    if not len(edges):
        return 0, 0
    starts, ends = edges[::2], edges[1::2]
    best = int(np.argmax(ends - starts))
    return int(starts[best]), int(ends[best])


# ----- a small PNG reader (8-bit RGB or RGBA, not interlaced: what Chromium writes) ---------


def read_png(path: Path) -> np.ndarray:
    """Pixels as a (height, width, 3) uint8 array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    channels = 3 if colour_type == 2 else 4
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8)
    raw = raw.reshape(height, stride + 1)
    pixels = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        pixels[y] = unfilter(int(raw[y, 0]), raw[y, 1:], previous, channels)
        previous = pixels[y]
    return pixels.reshape(height, width, channels)[:, :, :3]


def unfilter(kind: int, line: np.ndarray, previous: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one scanline's PNG filter (None, Sub, Up, Average or Paeth)."""
    if kind == 0:
        return line
    if kind == 2:
        return line + previous  # uint8 arithmetic wraps modulo 256, as PNG wants
    if kind == 1:  # a running sum per channel
        sums = np.cumsum(line.reshape(-1, bpp).astype(np.uint32), axis=0) % 256
        return sums.astype(np.uint8).reshape(-1)
    # Average and Paeth depend on the byte just decoded to their left: one byte at a time.
    raw, above = line.tobytes(), previous.tobytes()
    out = bytearray(len(raw))
    for i, value in enumerate(raw):
        b = above[i]
        if i < bpp:
            out[i] = (value + (b >> 1 if kind == 3 else b)) & 0xFF
            continue
        a = out[i - bpp]
        if kind == 3:
            out[i] = (value + ((a + b) >> 1)) & 0xFF
            continue
        c = above[i - bpp]
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        out[i] = (value + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return np.frombuffer(bytes(out), dtype=np.uint8)


def test_the_model_and_open_discrepancies_show_on_the_page() -> None:
    view = make_view()
    view["node"]["model"] = {
        "active": {"label": "base 1.0.0"},
        "offered": {"label": "base 1.1.0 (320000)", "adopted": False},
        "children": [{"code": "320104", "same_as_ours": False}],
    }
    view["node"]["discrepancies"] = {"open": 1, "resolved": 0, "observations": 2}
    view["discrepancies"] = [
        {
            "entity": "person",
            "record_key": "32010219850505234x",
            "attribute": "address",
            "authoritative_value": "玄武区2号",
            "source_node": "320102",
            "source_dept": "公安局",
            "observed_value": "<b>秦淮区新址</b>",
            "observer_node": "320104",
            "observer_dept": "人社局",
            "found_at_nodes": ["320000", "320100"],
        }
    ]
    page = Page(render_page(view))
    assert "未采用上级模型 not adopted: base 1.1.0 (320000)" in page.text
    assert "下级另有模型 children on another model: 320104" in page.text
    row = (
        "person 32010219850505234x address 玄武区2号 320102 公安局 <b>秦淮区新址</b> 320104 人社局"
    )
    assert f"{row} 320000, 320100" in page.text
    assert page.find("b", inside="discrepancies") == [], "peer text is escaped"
    assert page.find("table", id="discrepancies")


# ----- quality scores and feedback items ---------------------------------------------------


def scored(code: str, name: str, records: int, held: int, **scores: float | None) -> dict[str, Any]:
    """A resource of a quality report, its overall score from the others as the node does."""
    return {
        "code": code,
        "name": name,
        "department": "公安局",
        "entity": "person",
        "records": records,
        "held": held,
        "update_frequency": "daily",
        "scores": {**scores, "overall": overall(scores)},
    }


def report(code: str, name: str, tier: str, **parts: Any) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "code": code,
        "name": name,
        "tier": tier,
        "generated_at": "2026-11-18T09:33:19+00:00",
        "weights": dict(WEIGHTS),
        "resources": parts.get("resources", []),
        "children": parts.get("children", []),
        "pending": parts.get("pending", []),
    }


def province_report() -> dict[str, Any]:
    """A province whose city holds two counties' reports; another city not pulled yet."""
    xuanwu = report(
        "320102",
        "玄武区",
        "county",
        resources=[
            scored(
                "320102-GA-001",
                "户籍人口信息",
                1000,
                0,
                completeness=0.98,
                validity=0.95,
                uniqueness=1.0,
                consistency=0.99,
                timeliness=1.0,
            )
        ],
    )
    qinhuai = report(
        "320104",
        "秦淮区",
        "county",
        resources=[
            scored(
                "320104-MZ-003",
                "婚姻登记信息",
                500,
                20,
                completeness=0.7,
                validity=0.6,
                uniqueness=0.9,
                consistency=1.0,
                timeliness=0.5,
            )
        ],
    )
    empty = {d: None for d in ("completeness", "validity", "uniqueness", "consistency")}
    nanjing = report(
        "320100",
        "南京市",
        "city",
        resources=[scored("320100-GA-002", "空资源", 0, 0, **empty, timeliness=0.0)],
        children=[qinhuai, xuanwu],  # flatten orders children by code
    )
    pending = [{"code": "320200", "name": "无锡市"}]
    return with_rollups(report("320000", "江苏省", "province", children=[nanjing], pending=pending))


def feedback_item(item_id: str, kind: str, key: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": item_id,
        "kind": kind,
        "entity": "person",
        "resource": "320104-MZ-003",
        "record_key": key,
        "owner_node": "320104",
        "owner_dept": "民政局",
        "record_seq": 17,
        "reason": reason,
        "raised_node": "320000",
        "raised_by": "rule:id-checksum" if kind == "rule" else "zhang.wei",
        "raised_at": "2026-11-18T09:00:00+00:00",
        "state": "open",
        "closed": False,
        "overdue": False,
        "responses": [],
        "at_owner": False,
        "travels_to": "320104",
        **fields,
    }


def quality_view() -> dict[str, Any]:
    view = make_view()
    view["quality"] = flatten(province_report())
    view["quality_weights"] = dict(WEIGHTS)
    view["feedback"] = [
        feedback_item(
            "a1b2c3d4e5f6",
            "rule",
            "32010419800101123X",
            "身份证号校验位错误 check digit wrong",
            raised_at="2026-11-14T08:00:00+00:00",
            overdue=True,
        ),
        feedback_item(
            "0f9e8d7c6b5a",
            "objection",
            "320104199002023456",
            "地址已变更 <b>moved</b> to 秦淮区新址",
            state="acknowledged",
            responses=[
                {
                    "state": "acknowledged",
                    "actor": "li.na",
                    "note": "核实中 checking",
                    "node": "320104",
                    "at": "2026-11-18T09:20:00+00:00",
                }
            ],
        ),
    ]
    view["node"]["quality"] = {
        "library": ["base 1.0.0"],
        "quarantine": {"held": 20, "held_by_resource": [], "flags": 3},
        "feedback": {"open": 1, "acknowledged": 1, "closed": 4, "overdue": 1},
    }
    return view


def test_quality_scores_show_each_node_and_resource_in_tree_order() -> None:
    document = render_page(quality_view())
    page = Page(document)
    rows = [
        (r["data-node"], r["data-kind"], r.get("data-resource", ""))
        for r in page.find("tr", inside="quality-scores")
        if "data-kind" in r
    ]
    assert rows == [
        ("320000", "rollup", ""),
        ("320100", "rollup", ""),
        ("320100", "resource", "320100-GA-002"),
        ("320102", "rollup", ""),
        ("320102", "resource", "320102-GA-001"),
        ("320104", "rollup", ""),
        ("320104", "resource", "320104-MZ-003"),
        ("320200", "pending", ""),
    ]
    # Indented by depth, resources one step below their node's roll-up line.
    cells = [c for c in page.find("td", inside="quality-scores") if "style" in c]
    assert [c["style"] for c in cells] == [
        "padding-left:8px",
        "padding-left:26px",
        "padding-left:44px",
        "padding-left:44px",
        "padding-left:62px",
        "padding-left:44px",
        "padding-left:62px",
        "padding-left:26px",
    ]
    text = page.text
    # Each county's resource: its scores as percentages, overall coloured by level.
    assert "320102-GA-001 户籍人口信息 1,000 98.0% 95.0% 100.0% 99.0% 100.0% 97.9%" in text
    assert "320104-MZ-003 婚姻登记信息 500 70.0% 60.0% 90.0% 100.0% 50.0% 71.5%" in text
    # A resource without data has no scores but timeliness, and no overall score.
    assert "320100-GA-002 空资源 0 — — — — 0.0% —" in text
    # The city's roll-up weights by records (validity by records + held): 88.7%, 83.0%.
    assert "320100 南京市 市级 city · 汇总 roll-up: 3 资源 resources · 3 节点 nodes" in text
    assert "1,500 88.7% 83.0% 96.7% 99.3% 83.3% 89.0%" in text
    assert "320200 无锡市 未上报 no report pulled yet" in text
    levels = [
        s["class"]
        for s in page.find("span", inside="quality-scores")
        if s.get("class", "").startswith("badge")
    ]
    assert levels == [
        "badge score-warn",  # 320000: 89.0%
        "badge score-warn",  # 320100
        "badge score-good",  # 320102
        "badge score-good",  # 320102-GA-001
        "badge score-warn",  # 320104
        "badge score-warn",  # 320104-MZ-003
    ]
    assert "完整性 Completeness 25% · 有效性 Validity 30% · 唯一性 Uniqueness 15%" in text
    assert "一致性 Consistency 15% · 及时性 Timeliness 15%" in text


def test_open_feedback_items_show_with_their_state_and_escaped_reasons() -> None:
    document = render_page(quality_view())
    page = Page(document)
    items = [r["data-item"] for r in page.find("tr", inside="feedback") if "data-item" in r]
    assert items == ["a1b2c3d4e5f6", "0f9e8d7c6b5a"]  # oldest first, as the view has them
    assert page.find("tr", inside="feedback", class_="overdue") == [
        {"class": "overdue", "data-item": "a1b2c3d4e5f6"}
    ]
    assert len(page.find("span", inside="feedback", class_="badge overdue")) == 1
    text = page.text
    assert "规则 rule person 32010419800101123X 320104-MZ-003 320104 民政局" in text
    assert "异议 objection person 320104199002023456" in text
    assert "已受理 acknowledged li.na @ 320104: 核实中 checking" in text
    assert "地址已变更 <b>moved</b> to 秦淮区新址" in text
    assert page.find("b", inside="feedback") == [], "user text is escaped"
    assert "地址已变更 &lt;b&gt;moved&lt;/b&gt;" in document
    assert "zhang.wei @ 320000 2026-11-18 09:00:00 UTC 33 min 20 s 前 ago" in text
    assert (
        "待处理 open: 1 · 已受理 acknowledged: 1 · 逾期 overdue: 1 · 隔离 held in quarantine: 20"
        in text
    )
    # The discrepancies are feedback too: their table stays below the items.
    assert "待处理疑问数据 Open discrepancies 无待处理疑问数据 no open discrepancies" in text


def test_a_node_without_resources_or_a_quality_report_says_so() -> None:
    view = make_view()
    view["quality"] = flatten(
        with_rollups(report("320100", "南京市", "city", pending=[{"code": "320102"}]))
    )
    view["feedback"] = []
    page = Page(render_page(view))
    assert "暂无可评分的资源 no resources to score yet" in page.text
    assert "未上报 no report pulled yet: 320102" in page.text
    assert "无待处理反馈 no open feedback items" in page.text
    assert not page.find("table", id="quality-scores")
    # An older node's view has neither: the page renders all the same.
    old = Page(render_page(make_view()))
    assert "此视图不含质量报告 this view carries no quality report" in old.text
    assert "此视图不含反馈事项 this view carries no feedback items" in old.text
