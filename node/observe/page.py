"""The status page: one self-contained HTML document (inline CSS, charts as inline SVG).

`render_page` only draws: the HTTP server gathers the view (see `node.observe.view`) and
every piece of text that came from users or peers is escaped here. No JavaScript at all.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

REFRESH_SECONDS = 30
CATALOGUE_ROWS = 500  # a province's catalogue can be long; the CLI lists all of it

# One colour per link state; the series palette below never reuses them, so a colour in
# the tree always means a state and a colour in the lag chart always means a child.
STATE_COLOURS = {
    "streaming": "#2e7d32",
    "polling": "#1565c0",
    "idle": "#00838f",
    "connecting": "#f9a825",
    "reconnecting": "#f9a825",
    "down": "#c62828",
    "offline": "#757575",
    "stopped": "#757575",
}
UNKNOWN_STATE_COLOUR = "#9e9e9e"
STATE_LABELS = {
    "streaming": "流式同步",
    "polling": "轮询",
    "idle": "空闲",
    "connecting": "连接中",
    "reconnecting": "重连中",
    "down": "中断",
    "offline": "离线",
    "stopped": "已停止",
}
SERIES_COLOURS = (
    "#8e24aa",
    "#f4511e",
    "#3949ab",
    "#d81b60",
    "#6d4c41",
    "#00acc1",
    "#7cb342",
    "#546e7a",
)
NODE_COLOUR = "#263a52"
PARENT_COLOUR = "#607d8b"
FRESHNESS_COLOURS = {"fresh": "#43a047", "late": "#fb8c00", "stale": "#e53935"}
FRESHNESS_LABELS = {"fresh": "鲜活", "late": "滞后", "stale": "陈旧"}
TIER_LABELS = {"province": "省级", "city": "市级", "county": "县级"}
FREQUENCY_LABELS = {
    "realtime": "实时",
    "hourly": "每小时",
    "daily": "每日",
    "weekly": "每周",
    "monthly": "每月",
    "quarterly": "每季度",
    "yearly": "每年",
}
STATUS_LABELS = {"draft": "草稿", "published": "已发布", "retired": "已退役"}
# Quality scores: the columns of the report, and the overall score's colour by level.
SCORE_COLUMNS = (
    ("completeness", "完整性", "Completeness"),
    ("validity", "有效性", "Validity"),
    ("uniqueness", "唯一性", "Uniqueness"),
    ("consistency", "一致性", "Consistency"),
    ("timeliness", "及时性", "Timeliness"),
    ("overall", "综合", "Overall"),
)
QUALITY_GOOD, QUALITY_WARN = 0.9, 0.7
SCORE_COLOURS = {
    "good": FRESHNESS_COLOURS["fresh"],
    "warn": FRESHNESS_COLOURS["late"],
    "bad": FRESHNESS_COLOURS["stale"],
}
SCORE_LEVEL_LABELS = {"good": "良好", "warn": "一般", "bad": "较差"}
FEEDBACK_KIND_LABELS = {"rule": "规则", "objection": "异议"}
FEEDBACK_STATE_LABELS = {
    "open": "待处理",
    "acknowledged": "已受理",
    "corrected": "已更正",
    "confirmed-correct": "确认无误",
    "rejected": "已驳回",
}

# Tree diagram geometry (SVG user units; the drawing scales down on narrow screens).
TREE_WIDTH = 1160
BOX_W, BOX_H, BAND_H = 170, 72, 24
COLUMN_GAP, LEVEL_GAP, ROW_GAP = 18, 56, 30
PER_ROW = 6

# Lag chart geometry: the legend sits above the plot, which is as tall as fixed here.
CHART_W = 1160
PLOT_LEFT, PLOT_RIGHT, PLOT_HEIGHT = 78, 1136, 256
MARKERS_UP_TO = 60  # draw a dot per sample only while they stay readable

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f5f8;color:#1f2d3d;font:14px/1.5 "Noto Sans CJK SC",
 "PingFang SC","Microsoft YaHei","WenQuanYi Micro Hei",system-ui,sans-serif}
header{background:#1c2b3c;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px;font-weight:600}
header .sub{color:#c8d3df;font-size:13px;margin-top:2px}
main{max-width:1220px;margin:0 auto;padding:20px 24px 8px}
section{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:16px 20px;
 margin-bottom:18px}
h2{font-size:17px;margin:0 0 12px;font-weight:600}
h3{font-size:14px;margin:16px 0 8px;font-weight:600;color:#3d4f63}
.en{color:#6b7b8c;font-weight:400}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}
.card{border:1px solid #e3e8ee;border-radius:6px;padding:8px 12px;background:#fafbfc}
.card .k{font-size:12px;color:#6b7b8c}
.card .v{font-size:16px;font-weight:600;word-break:break-all}
.small{font-size:12px;font-weight:400;color:#6b7b8c}
.warn{color:#e65100}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;font-weight:600;color:#3d4f63;background:#f0f3f7;padding:6px 8px;
 border-bottom:1px solid #dde3ea;white-space:nowrap}
td{padding:5px 8px;border-bottom:1px solid #edf0f4;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.error-row td{color:#b71c1c;background:#fdf3f3;word-break:break-word}
tr.error-row .en{color:#c65b5b}
.nowrap{white-space:nowrap}
.scroll{overflow-x:auto}
.badge{display:inline-block;padding:0 8px;border-radius:10px;color:#fff;font-size:12px;
 line-height:20px;white-space:nowrap}
.muted{color:#8a97a5}
.note{border-left:4px solid #b0bec5;background:#f7f9fa;padding:8px 12px;color:#455a64}
.empty{padding:28px;text-align:center;color:#6b7b8c;background:#f7f9fa;border-radius:6px;
 font-size:15px}
.bar{display:flex;width:180px;height:10px;border-radius:5px;overflow:hidden;
 background:#eceff1;margin-top:5px}
tr.rollup td{font-weight:600;background:#f7f9fb}
svg{max-width:100%;height:auto;display:block}
svg text{font-family:"Noto Sans CJK SC","PingFang SC","Microsoft YaHei","WenQuanYi Micro Hei",
 system-ui,sans-serif}
footer{max-width:1220px;margin:0 auto;padding:0 24px 24px;color:#8a97a5;font-size:12px}
"""


def render_page(view: Mapping[str, Any]) -> str:
    """The whole status page for one view (`node.observe.view`): `{node, lag_history,
    catalog, discrepancies, quality, quality_weights, feedback, generated_at}`; a view
    without the later keys (an older node's) renders with those parts saying so."""
    node: Mapping[str, Any] = view.get("node") or {}
    now = _parse_time(view.get("generated_at"))
    children: list[Mapping[str, Any]] = list(node.get("children") or [])
    sections = [
        _overview_section(node, now),
        _tree_section(node, children, now),
        _lag_section(children, view.get("lag_history") or {}),
        _catalogue_section(view.get("catalog") or [], node.get("catalog") or {}, now),
        _quality_section(view, node, now),
    ]
    title = f"{_e(node.get('code'))} {_e(node.get('name'))} · 同源 Tongyuan 节点状态"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="zh-CN">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{title}</title>",
            f"<style>{CSS}</style>",
            "</head>",
            "<body>",
            _header(node, view.get("generated_at")),
            "<main>",
            *sections,
            "</main>",
            _footer(view.get("generated_at")),
            "</body>",
            "</html>",
        ]
    )


# ----- header, overview, footer -------------------------------------------------------------


def _header(node: Mapping[str, Any], generated_at: Any) -> str:
    tier = str(node.get("tier") or "")
    return (
        "<header>"
        f"<h1>同源 Tongyuan · {_e(node.get('name'))} {_e(node.get('code'))}</h1>"
        f'<div class="sub">节点状态 Node status · {_e(TIER_LABELS.get(tier, ""))} {_e(tier)}'
        f" · 生成于 generated {_e(_format_time(_parse_time(generated_at)))}</div>"
        "</header>"
    )


def _security_card(security: Mapping[str, Any]) -> str:
    """Plaintext and a missing certificate are shown loudly, never as a footnote."""
    mode = security.get("mode")
    if mode == "plaintext-dev":
        return (
            '<span class="warn"><b>明文 PLAINTEXT</b></span>'
            '<div class="small warn">仅供开发 development only: federation is not '
            "authenticated</div>"
        )
    if mode == "no-certificate":
        return (
            '<span class="warn"><b>无证书 NO CERTIFICATE</b></span>'
            '<div class="small warn">federation calls are refused</div>'
        )
    if mode == "mtls":
        parent = security.get("parent") or "root"
        return (
            f'双向 TLS mutual TLS<div class="small">parent {_e(parent)} · until '
            f"{_e(str(security.get('not_after', ''))[:10])}</div>"
        )
    return "—"


def _overview_section(node: Mapping[str, Any], now: datetime | None) -> str:
    tier = str(node.get("tier") or "")
    catalog = node.get("catalog") or {}
    own = catalog.get("own") or {}
    rows = node.get("rows") or {}
    cards = [
        (_label("层级", "Tier"), f"{_e(TIER_LABELS.get(tier, ''))} {_e(tier)}"),
        (
            _label("服务", "Serving"),
            "服务中 serving" if node.get("serving") else "未服务 not serving",
        ),
        (_label("监听", "Listen"), _e(node.get("listen"))),
        (_label("安全", "Security"), _security_card(node.get("security") or {})),
        (_label("变更序号", "Head seq"), _number(node.get("head_seq"))),
        *[(_label("行数", f"Rows · {_e(entity)}"), _number(n)) for entity, n in rows.items()],
        (
            _label("本节点资源", "Own resources"),
            f'{_number(own.get("published", 0))} <span class="small">已发布 published</span>'
            f'<div class="small">草稿 draft {_number(own.get("draft", 0))} · '
            f"已退役 retired {_number(own.get('retired', 0))}</div>",
        ),
        (_label("标准项", "Standard items"), _number(catalog.get("standard_items", 0))),
        (_label("模型", "Model"), _model_card(node.get("model") or {})),
    ]
    grid = "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div></div>'
        for k, v in cards
    )
    return (
        f'<section id="overview"><h2>{_label("概况", "Overview")}</h2>'
        f'<div class="cards">{grid}</div>'
        f"{_ingests_table(node.get('recent_ingests') or [], now)}</section>"
    )


def _ingests_table(ingests: Sequence[Mapping[str, Any]], now: datetime | None) -> str:
    if not ingests:
        return ""
    rows = "".join(
        "<tr>"
        f"<td>{_e(i.get('entity'))}</td><td>{_e(i.get('file'))}</td>"
        f'<td class="num">{_number(i.get("inserted"))}</td>'
        f'<td class="num">{_number(i.get("updated"))}</td>'
        f'<td class="num">{_number(i.get("deleted"))}</td>'
        f"<td>{_when(i.get('finished_at'), now)}</td>"
        "</tr>"
        for i in ingests
    )
    head = _header_row(
        [
            _label("实体", "Entity"),
            _label("文件", "File"),
            ("num", _label("新增", "Inserted")),
            ("num", _label("更新", "Updated")),
            ("num", _label("删除", "Deleted")),
            _label("完成于", "Finished"),
        ]
    )
    return f"<h3>{_label('最近导入', 'Recent imports')}</h3>{_table(head, rows)}"


def _footer(generated_at: Any) -> str:
    return (
        f"<footer>生成于 generated at {_e(generated_at)} · "
        f"每 {REFRESH_SECONDS} 秒自动刷新 refreshes every {REFRESH_SECONDS} s · "
        "机器可读 machine-readable: /status.json, /metrics</footer>"
    )


# ----- the node tree -----------------------------------------------------------------------


def _tree_section(
    node: Mapping[str, Any], children: Sequence[Mapping[str, Any]], now: datetime | None
) -> str:
    parents: list[Mapping[str, Any]] = list(node.get("parents") or [])
    return (
        f'<section id="tree"><h2>{_label("节点树", "Place in the tree")}</h2>'
        f"{_tree_svg(node, parents, children)}"
        f"<h3>{_label('上级节点', 'Parents')}</h3>{_parents_table(parents, now)}"
        f"<h3>{_label('下级节点', 'Children')}</h3>{_children_table(children, now)}"
        "</section>"
    )


def _tree_svg(
    node: Mapping[str, Any],
    parents: Sequence[Mapping[str, Any]],
    children: Sequence[Mapping[str, Any]],
) -> str:
    """Parents on top, this node in the middle, its children below (six to a row)."""
    parts: list[str] = []
    centre = TREE_WIDTH / 2
    node_w = BOX_W + 70
    y = 8.0
    if parents:
        xs = _row_positions(len(parents), BOX_W)
        for parent, x in zip(parents, xs, strict=True):
            parts.append(_link_line(x + BOX_W / 2, y + BOX_H, centre, y + BOX_H + LEVEL_GAP))
            parts.append(_parent_box(parent, x, y))
        y += BOX_H + LEVEL_GAP
    parts.append(_node_box(node, centre - node_w / 2, y, node_w))
    node_bottom = y + BOX_H
    y = node_bottom + LEVEL_GAP
    if not children:
        parts.append(
            f'<text x="{centre:.0f}" y="{y + 20:.0f}" text-anchor="middle" fill="#8a97a5" '
            'font-size="13">无下级节点 no children</text>'
        )
        y += 30
    rows = [children[i : i + PER_ROW] for i in range(0, len(children), PER_ROW)]
    columns = min(len(children), PER_ROW)
    grid = _row_positions(columns, BOX_W) if children else []
    # One trunk down from this node (between the middle columns), one bus per row of children.
    trunk_x = centre
    for r, row in enumerate(rows):
        top = y + r * (BOX_H + ROW_GAP)
        bus_y = top - (LEVEL_GAP / 2 if r == 0 else ROW_GAP / 2)
        parts.append(_link_line(trunk_x, node_bottom, trunk_x, bus_y))
        centres = [x + BOX_W / 2 for x in grid[: len(row)]]
        parts.append(_link_line(min(*centres, trunk_x), bus_y, max(*centres, trunk_x), bus_y))
        for child, x in zip(row, grid, strict=False):
            parts.append(_link_line(x + BOX_W / 2, bus_y, x + BOX_W / 2, top))
            parts.append(_child_box(child, x, top))
    if rows:
        y += len(rows) * (BOX_H + ROW_GAP) - ROW_GAP
    height = y + 10
    return (
        f'<svg id="tree-diagram" role="img" aria-label="节点树 node tree" '
        f'viewBox="0 0 {TREE_WIDTH} {height:.0f}" width="{TREE_WIDTH}" height="{height:.0f}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def _row_positions(count: int, width: float) -> list[float]:
    """Left edges of `count` boxes centred across the tree drawing."""
    total = count * width + (count - 1) * COLUMN_GAP
    start = (TREE_WIDTH - total) / 2
    return [start + i * (width + COLUMN_GAP) for i in range(count)]


def _link_line(x1: float, y1: float, x2: float, y2: float) -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
        'stroke="#b0bcc8" stroke-width="1.5"/>'
    )


def _box(
    x: float, y: float, width: float, colour: str, title: str, lines: Sequence[tuple[str, str]]
) -> str:
    """A rounded box with a solid coloured band carrying `title` and up to two text lines."""
    body = "".join(
        f'<text x="{x + 10:.1f}" y="{y + BAND_H + 18 + i * 18:.1f}" font-size="12" '
        f'fill="{fill}">{text}</text>'
        for i, (text, fill) in enumerate(lines)
    )
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{width}" height="{BOX_H}" rx="6" fill="#fff" '
        f'stroke="{colour}" stroke-width="2"/>'
        f'<path d="{_top_band(x, y, width)}" fill="{colour}"/>'
        f'<text x="{x + 10:.1f}" y="{y + 17:.1f}" font-size="13" font-weight="600" '
        f'fill="#fff">{title}</text>{body}'
    )


def _top_band(x: float, y: float, width: float) -> str:
    """The band across a box's top, rounded like the box's upper corners."""
    r = 6
    return (
        f"M{x:.1f},{y + BAND_H:.1f} V{y + r:.1f} Q{x:.1f},{y:.1f} {x + r:.1f},{y:.1f} "
        f"H{x + width - r:.1f} Q{x + width:.1f},{y:.1f} {x + width:.1f},{y + r:.1f} "
        f"V{y + BAND_H:.1f} Z"
    )


def _node_box(node: Mapping[str, Any], x: float, y: float, width: float) -> str:
    tier = str(node.get("tier") or "")
    serving = "服务中 serving" if node.get("serving") else "未服务 not serving"
    title = f"{_e(node.get('code'))} {_e(_fit(str(node.get('name') or ''), 22))}"
    lines = [
        (f"本节点 this node · {_e(TIER_LABELS.get(tier, ''))} {_e(tier)}", "#1f2d3d"),
        (f"{serving} · head {_number(node.get('head_seq'))}", "#5a6b7d"),
    ]
    return f'<g id="node-self">{_box(x, y, width, NODE_COLOUR, title, lines)}</g>'


def _parent_box(parent: Mapping[str, Any], x: float, y: float) -> str:
    code = _e(parent.get("code"))
    lines = [
        ("上级 parent", "#1f2d3d"),
        (f"acked 已确认 {_number(parent.get('acked_seq'))}", "#5a6b7d"),
    ]
    box = _box(x, y, BOX_W, PARENT_COLOUR, code, lines)
    return f'<g id="parent-{code}" class="parent">{box}</g>'


def _child_box(child: Mapping[str, Any], x: float, y: float) -> str:
    code = _e(child.get("code"))
    state = str(child.get("state") or "unknown")
    colour = _state_colour(state)
    title = f"{code} {_e(_fit(str(child.get('name') or ''), 12))}"
    lag = f"延迟 lag {_number(child.get('lag'))} · {_duration(child.get('lag_seconds'))}"
    warning = " ⚠" if child.get("error") else ""
    lines = [
        (f"● {_e(state)} {_e(STATE_LABELS.get(state, ''))}{warning}", colour),
        (lag, "#5a6b7d"),
    ]
    tooltip = f"<title>{_e(child.get('error'))}</title>" if child.get("error") else ""
    return (
        f'<g id="child-{code}" class="child state-{_e(state)}" data-state="{_e(state)}">'
        f"{tooltip}{_box(x, y, BOX_W, colour, title, lines)}</g>"
    )


def _parents_table(parents: Sequence[Mapping[str, Any]], now: datetime | None) -> str:
    if not parents:
        return '<p class="muted">无上级节点 no parent: this node is the top of its tree</p>'
    head = _header_row(
        [
            _label("节点", "Node"),
            ("num", _label("已确认序号", "Acked seq")),
            _label("最近联系", "Last seen"),
        ]
    )
    rows = "".join(
        f'<tr><td>{_e(p.get("code"))}</td><td class="num">{_number(p.get("acked_seq"))}</td>'
        f"<td>{_when(p.get('last_seen'), now)}</td></tr>"
        for p in parents
    )
    return _table(head, rows)


def _children_table(children: Sequence[Mapping[str, Any]], now: datetime | None) -> str:
    if not children:
        return '<p class="muted">无下级节点 no children attached</p>'
    head = _header_row(
        [
            _label("节点", "Node"),
            _label("状态", "State"),
            _label("地址", "Address"),
            ("num", _label("检查点", "Checkpoint")),
            ("num", _label("下级最新", "Child head")),
            ("num", _label("延迟变更", "Lag changes")),
            ("num", _label("延迟时间", "Lag time")),
            _label("最近拉取", "Last pull"),
            ("num", _label("行数", "Rows")),
        ]
    )
    rows = "".join(_child_row(c, now) for c in children)
    return _table(head, rows, "children-table")


def _child_row(child: Mapping[str, Any], now: datetime | None) -> str:
    state = str(child.get("state") or "unknown")
    return (
        f'<tr data-child="{_e(child.get("code"))}">'
        f'<td class="nowrap">{_e(child.get("code"))} {_e(child.get("name"))}</td>'
        f"<td>{_state_badge(state)}</td>"
        f"<td>{_e(child.get('address'))}</td>"
        f'<td class="num">{_number(child.get("checkpoint"))}</td>'
        f'<td class="num">{_number(child.get("child_head"))}</td>'
        f'<td class="num">{_number(child.get("lag"))}</td>'
        f'<td class="num">{_duration(child.get("lag_seconds"))}</td>'
        f"<td>{_when(child.get('last_pull'), now)}</td>"
        f'<td class="num">{_number(child.get("rows"))}'
        f'<div class="small">已应用 applied {_number(child.get("rows_applied"))}</div></td>'
        "</tr>"
        f"{_error_row(child.get('error'))}"
    )


def _error_row(error: Any) -> str:
    """A link's error in full, on its own line under the child's figures."""
    if not error:
        return ""
    return (
        f'<tr class="error-row"><td colspan="9">⚠ {_label("错误", "Error")}: {_e(error)}</td></tr>'
    )


def _state_badge(state: str) -> str:
    return (
        f'<span class="badge state-{_e(state)}" style="background:{_state_colour(state)}">'
        f"{_e(state)} {_e(STATE_LABELS.get(state, ''))}</span>"
    )


def _state_colour(state: str) -> str:
    return STATE_COLOURS.get(state, UNKNOWN_STATE_COLOUR)


# ----- the lag chart -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Plot:
    """The chart's plotting rectangle and the time and lag ranges it shows."""

    top: float
    t0: float
    t1: float
    y_max: float

    @property
    def bottom(self) -> float:
        return self.top + PLOT_HEIGHT

    def at(self, t: float, value: float) -> tuple[float, float]:
        """Where a sample at unix time `t` with lag `value` is drawn."""
        x = PLOT_LEFT + (t - self.t0) / (self.t1 - self.t0) * (PLOT_RIGHT - PLOT_LEFT)
        return x, self.bottom - value / self.y_max * PLOT_HEIGHT


def _lag_section(
    children: Sequence[Mapping[str, Any]], history: Mapping[str, Sequence[Sequence[Any]]]
) -> str:
    names = {str(c.get("code")): str(c.get("name") or "") for c in children}
    codes = [str(c.get("code")) for c in children]
    codes += sorted(code for code in history if code not in names)
    return (
        f'<section id="lag"><h2>{_label("同步延迟", "Lag over the last hours")}</h2>'
        f"{_lag_chart(codes, names, history)}</section>"
    )


def _lag_chart(
    codes: Sequence[str], names: Mapping[str, str], history: Mapping[str, Sequence[Sequence[Any]]]
) -> str:
    """One line per child; y in seconds when samples carry them, else in changes."""
    in_seconds = any(_sample(p, 2) is not None for c in codes for p in history.get(c, []))
    column = 2 if in_seconds else 1
    series = {
        code: [
            (float(p[0]), value)
            for p in history.get(code, [])
            if (value := _sample(p, column)) is not None
        ]
        for code in codes
    }
    points = [pt for pts in series.values() for pt in pts]
    if not points:
        return '<div class="empty" id="lag-chart-empty">暂无数据 no samples yet</div>'
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    if t1 - t0 < 60:
        t0, t1 = t0 - 30, t1 + 30
    margin = (t1 - t0) * 0.015  # keeps the first and last dots off the chart's edges
    highest = max(v for _, v in points)
    y_step = _step(highest, seconds=in_seconds)
    legend, legend_bottom = _legend(codes, names, series)
    plot = _Plot(
        top=legend_bottom + 36,
        t0=t0 - margin,
        t1=t1 + margin,
        y_max=y_step * max(1, math.ceil(highest / y_step)),
    )
    parts = [legend, _y_axis(plot, y_step, in_seconds), _x_axis(plot)]
    parts += [
        _series(code, names.get(code, ""), i, pts, plot)
        for i, (code, pts) in enumerate(series.items())
        if pts
    ]
    height = plot.bottom + 48
    return (
        f'<svg id="lag-chart" role="img" aria-label="同步延迟 lag chart" '
        f'viewBox="0 0 {CHART_W} {height:.0f}" width="{CHART_W}" height="{height:.0f}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def _sample(point: Sequence[Any], column: int) -> float | None:
    value = point[column] if len(point) > column else None
    return None if value is None else float(value)


def _series_style(index: int) -> str:
    """Stroke attributes of the index-th child's line: a colour, dashed once colours repeat."""
    colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
    dash = ' stroke-dasharray="7 4"' if index >= len(SERIES_COLOURS) else ""
    return f'stroke="{colour}"{dash}'


def _y_axis(plot: _Plot, step: float, in_seconds: bool) -> str:
    parts = []
    for i in range(round(plot.y_max / step) + 1):
        value = i * step
        _, y = plot.at(plot.t0, value)
        label = _duration(value, compact=True) if in_seconds else _number(round(value))
        parts.append(
            f'<line x1="{PLOT_LEFT}" y1="{y:.1f}" x2="{PLOT_RIGHT}" y2="{y:.1f}" '
            f'stroke="{"#90a4ae" if i == 0 else "#e6eaef"}" stroke-width="1"/>'
            f'<text x="{PLOT_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#5a6b7d">{label}</text>'
        )
    unit = "延迟 lag (时间 time)" if in_seconds else "延迟 lag (变更数 changes)"
    parts.append(
        f'<text x="{PLOT_LEFT - 64}" y="{plot.top - 16:.0f}" font-size="12" fill="#3d4f63">'
        f"{unit}</text>"
    )
    return f'<g class="axis y-axis">{"".join(parts)}</g>'


def _x_axis(plot: _Plot) -> str:
    base = plot.bottom
    span = plot.t1 - plot.t0
    step = _time_step(span)
    parts = [
        f'<line x1="{PLOT_LEFT}" y1="{plot.top:.0f}" x2="{PLOT_LEFT}" y2="{base:.0f}" '
        'stroke="#90a4ae" stroke-width="1"/>'
    ]
    tick = math.ceil(plot.t0 / step) * step
    while tick <= plot.t1:
        x, _ = plot.at(tick, 0)
        moment = datetime.fromtimestamp(tick, UTC)
        stamp = moment.strftime("%m-%d %H:%M" if span > 86400 else "%H:%M")
        parts.append(
            f'<line x1="{x:.1f}" y1="{base:.0f}" x2="{x:.1f}" y2="{base + 5:.0f}" '
            'stroke="#90a4ae"/>'
            f'<text x="{x:.1f}" y="{base + 19:.0f}" text-anchor="middle" font-size="11" '
            f'fill="#5a6b7d">{stamp}</text>'
        )
        tick += step
    parts.append(
        f'<text x="{PLOT_RIGHT}" y="{base + 42:.0f}" text-anchor="end" font-size="12" '
        'fill="#3d4f63">时间 time (UTC)</text>'
    )
    return f'<g class="axis x-axis">{"".join(parts)}</g>'


def _series(
    code: str, name: str, index: int, points: Sequence[tuple[float, float]], plot: _Plot
) -> str:
    xy = [plot.at(t, v) for t, v in points]
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = ""
    if len(xy) <= MARKERS_UP_TO:
        dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"/>' for x, y in xy)
    colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
    return (
        f'<g class="series" fill="{colour}">'
        f'<polyline class="lag-series" data-child="{_e(code)}" points="{coords}" fill="none" '
        f'{_series_style(index)} stroke-width="2.5" stroke-linejoin="round" '
        f'stroke-linecap="round"><title>{_e(code)} {_e(name)}</title></polyline>{dots}</g>'
    )


def _legend(
    codes: Sequence[str],
    names: Mapping[str, str],
    series: Mapping[str, Sequence[tuple[float, float]]],
) -> tuple[str, float]:
    """The legend across the chart's top, wrapping as needed, and the y its last row ends."""
    parts = []
    x, y = float(PLOT_LEFT), 18.0
    for i, code in enumerate(codes):
        label = f"{code} {_fit(names.get(code, ''), 16)}"
        if not series.get(code):
            label += " (暂无数据 no samples)"
        width = 30 + _text_units(label) * 6.8
        if x + width > PLOT_RIGHT and x > PLOT_LEFT:
            x, y = float(PLOT_LEFT), y + 20
        parts.append(
            f'<g class="legend-item" data-child="{_e(code)}">'
            f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 20:.1f}" y2="{y - 4:.1f}" '
            f'{_series_style(i)} stroke-width="3"/>'
            f'<text x="{x + 26:.1f}" y="{y:.1f}" font-size="12" fill="#1f2d3d">{_e(label)}</text>'
            "</g>"
        )
        x += width + 14
    return f'<g class="legend">{"".join(parts)}</g>', y + 6


def _step(span: float, seconds: bool) -> float:
    """A readable tick step giving about five ticks over `span`."""
    raw = max(span, 1.0) / 5
    if seconds:
        for candidate in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
            if candidate >= raw:
                return float(candidate)
        return 3600.0 * math.ceil(raw / 3600)
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if multiple * magnitude >= raw:
            return float(max(1, multiple * magnitude))
    return float(10 * magnitude)


def _time_step(span: float) -> float:
    """Seconds between time ticks: a round clock interval giving at most seven ticks."""
    for candidate in (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200):
        if span / candidate <= 7:
            return float(candidate)
    return 86400.0 * math.ceil(span / 86400 / 7)


# ----- the catalogue -----------------------------------------------------------------------


def _catalogue_section(
    entries: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], now: datetime | None
) -> str:
    totals = summary.get("freshness") or {}
    chips = " ".join(
        f"{_freshness_badge(state)} {_number(totals.get(state, 0))}" for state in FRESHNESS_COLOURS
    )
    return (
        f'<section id="catalogue"><h2>{_label("资源目录与鲜活度", "Catalogue and freshness")}</h2>'
        f"<p>{_label('全部已发布资源', 'All published resources')}: {chips}</p>"
        f"<h3>{_label('各节点鲜活度', 'Freshness per node')}</h3>"
        f"{_freshness_by_node(summary.get('by_node') or [])}"
        f"<h3>{_label('资源', 'Resources')}</h3>{_resources_table(entries, now)}</section>"
    )


def _freshness_by_node(by_node: Sequence[Mapping[str, Any]]) -> str:
    if not by_node:
        return '<p class="muted">暂无已发布资源 no published resources yet</p>'
    head = _header_row(
        [
            _label("节点", "Node"),
            *[("num", _freshness_badge(state)) for state in FRESHNESS_COLOURS],
            _label("占比", "Share"),
        ]
    )
    rows = "".join(
        f'<tr data-node="{_e(n.get("code"))}"><td>{_e(n.get("code"))} {_e(n.get("name"))}</td>'
        + "".join(f'<td class="num">{_number(n.get(s, 0))}</td>' for s in FRESHNESS_COLOURS)
        + f"<td>{_freshness_bar(n)}</td></tr>"
        for n in by_node
    )
    return _table(head, rows, "freshness-by-node")


def _freshness_bar(counts: Mapping[str, Any]) -> str:
    total = sum(int(counts.get(s) or 0) for s in FRESHNESS_COLOURS)
    if not total:
        return '<div class="bar"></div>'
    segments = "".join(
        f'<div style="width:{100 * int(counts.get(s) or 0) / total:.1f}%;'
        f'background:{colour}"></div>'
        for s, colour in FRESHNESS_COLOURS.items()
    )
    return f'<div class="bar">{segments}</div>'


def _resources_table(entries: Sequence[Mapping[str, Any]], now: datetime | None) -> str:
    if not entries:
        return '<p class="muted">目录为空 no resources in the catalogue yet</p>'
    # Problems first: a long catalogue is cut, and stale resources must stay on the page.
    order = {"stale": 0, "late": 1, "fresh": 2}
    ranked = sorted(entries, key=lambda d: order.get(str(d.get("freshness")), 3))
    shown = ranked[:CATALOGUE_ROWS]
    head = _header_row(
        [
            _label("编码", "Code"),
            _label("名称", "Name"),
            _label("部门", "Department"),
            _label("节点路径", "Node path"),
            _label("更新频率", "Frequency"),
            _label("鲜活度", "Freshness"),
            _label("最近变更", "Last change"),
        ]
    )
    rows = "".join(_resource_row(d, now) for d in shown)
    cut = ""
    if len(ranked) > len(shown):
        cut = (
            f'<p class="muted">显示 showing {len(shown)} / {len(ranked)} · '
            "完整列表 full list: <code>tongyuan catalog list</code></p>"
        )
    caption = '<p class="muted">陈旧与滞后在前 stale and late first</p>'
    return f"{caption}{_table(head, rows, 'resources')}{cut}"


def _resource_row(entry: Mapping[str, Any], now: datetime | None) -> str:
    path = " › ".join(
        f"{_e(step.get('name'))} {_e(step.get('code'))}" for step in entry.get("path") or []
    )
    frequency = str(entry.get("update_frequency") or "")
    freshness = entry.get("freshness")
    status = str(entry.get("status") or "")
    badge = (
        _freshness_badge(str(freshness))
        if freshness
        else f'<span class="muted">{_e(STATUS_LABELS.get(status, ""))} {_e(status)}</span>'
    )
    return (
        f'<tr data-resource="{_e(entry.get("code"))}">'
        f"<td>{_e(entry.get('code'))}</td><td>{_e(entry.get('name'))}</td>"
        f"<td>{_e(entry.get('department'))}</td><td>{path or '—'}</td>"
        f"<td>{_e(FREQUENCY_LABELS.get(frequency, ''))} {_e(frequency)}</td>"
        f"<td>{badge}</td>"
        f"<td>{_when(entry.get('last_change_at') or entry.get('published_at'), now)}</td>"
        "</tr>"
    )


def _freshness_badge(state: str) -> str:
    colour = FRESHNESS_COLOURS.get(state, UNKNOWN_STATE_COLOUR)
    return (
        f'<span class="badge freshness-{_e(state)}" style="background:{colour}">'
        f"{_e(FRESHNESS_LABELS.get(state, ''))} {_e(state)}</span>"
    )


def _model_card(model: Mapping[str, Any]) -> str:
    active = model.get("active") or {}
    offered = model.get("offered")
    text = _e(active.get("label"))
    if offered and not offered.get("adopted"):
        text += (
            f'<div class="small warn">未采用上级模型 not adopted: {_e(offered.get("label"))}</div>'
        )
    differing = [c.get("code") for c in model.get("children") or [] if not c.get("same_as_ours")]
    if differing:
        text += (
            f'<div class="small">下级另有模型 children on another model: '
            f"{_e(', '.join(str(c) for c in differing))}</div>"
        )
    return text


# ----- quality scores and feedback ---------------------------------------------------------


def _quality_section(view: Mapping[str, Any], node: Mapping[str, Any], now: datetime | None) -> str:
    quality = node.get("quality") or {}
    return (
        f'<section id="quality"><h2>{_label("数据质量与反馈", "Data quality and feedback")}</h2>'
        f"<h3>{_label('各下级质量评分', 'Quality scores per child')}</h3>"
        f"{_scores_table(view.get('quality'), view.get('quality_weights') or {})}"
        f"<h3>{_label('待处理反馈', 'Open feedback items')}</h3>"
        f"{_feedback_counts(quality)}"
        f"{_feedback_table(view.get('feedback'), quality.get('feedback') or {}, now)}"
        f"<h3>{_label('待处理疑问数据', 'Open discrepancies')}</h3>"
        f"{_discrepancies_table(view.get('discrepancies') or [], node.get('discrepancies') or {})}"
        "</section>"
    )


def _scores_table(rows: Sequence[Mapping[str, Any]] | None, weights: Mapping[str, Any]) -> str:
    """The quality report line by line: each node's roll-up, its own resources, its children
    below it (indented by depth), so children's scores read side by side."""
    if rows is None:
        return '<p class="note">此视图不含质量报告 this view carries no quality report</p>'
    pending = [r for r in rows if r.get("kind") == "pending"]
    if not rows or not any(r.get("kind") == "resource" for r in rows):
        waiting = ""
        if pending:
            names = ", ".join(_node_label(r) for r in pending)
            waiting = f'<p class="muted">未上报 no report pulled yet: {names}</p>'
        return (
            '<div class="empty" id="quality-empty">暂无可评分的资源 no resources to score yet '
            '<div class="small">本节点或下级发布资源并导入数据后显示评分 scores show once '
            "resources are published here or below and hold data</div></div>"
            f"{waiting}"
        )
    head = _header_row(
        [
            _label("节点 / 资源", "Node / resource"),
            ("num", _label("记录", "Records")),
            *[("num", _label(zh, en)) for _, zh, en in SCORE_COLUMNS],
        ]
    )
    body = "".join(_score_row(r) for r in rows)
    return _weights_note(weights) + _table(head, body, "quality-scores")


def _weights_note(weights: Mapping[str, Any]) -> str:
    parts = [
        f"{zh} {en} {_share(weights.get(name))}"
        for name, zh, en in SCORE_COLUMNS
        if name in weights
    ]
    if not parts:
        return ""
    return (
        '<p class="small" id="quality-weights">综合评分 overall = 加权平均 weighted mean: '
        f"{' · '.join(parts)} (权重按已有评分归一 renormalised over the scores that exist); "
        "汇总行按记录数加权 roll-up lines weight each resource by its records. "
        f"综合 overall ≥{QUALITY_GOOD:.0%} {_score_level_badge('good')} · "
        f"≥{QUALITY_WARN:.0%} {_score_level_badge('warn')} · "
        f"&lt;{QUALITY_WARN:.0%} {_score_level_badge('bad')}</p>"
    )


def _score_row(row: Mapping[str, Any]) -> str:
    kind = str(row.get("kind") or "")
    depth = _depth(row.get("depth"))
    node = _node_label(row)
    attributes = f'data-node="{_e(row.get("node"))}" data-kind="{_e(kind)}"'
    if kind == "pending":
        return (
            f'<tr class="pending" {attributes}>'
            f'<td style="padding-left:{_indent(depth)}px">{node}</td>'
            f'<td colspan="{len(SCORE_COLUMNS) + 1}" class="muted">'
            "未上报 no report pulled yet</td></tr>"
        )
    if kind == "rollup":
        tier = str(row.get("tier") or "")
        nodes = int(row.get("nodes") or 0)
        covers = f"{_number(row.get('resources'))} 资源 resources"
        if nodes > 1:
            covers += f" · {_number(nodes)} 节点 nodes"
        label = (
            f'{node} <span class="small">{TIER_LABELS.get(tier, "")} {_e(tier)} · '
            f"汇总 roll-up: {covers}</span>"
        )
        css = "rollup"
    else:
        label = f"{_e(row.get('resource'))} {_e(row.get('resource_name'))}"
        attributes += f' data-resource="{_e(row.get("resource"))}"'
        depth += 1
        css = "resource"
    scores = "".join(
        f'<td class="num">{_percent(row.get(name))}</td>' for name, _, _ in SCORE_COLUMNS[:-1]
    )
    return (
        f'<tr class="{css}" {attributes}>'
        f'<td style="padding-left:{_indent(depth)}px">{label}</td>'
        f'<td class="num">{_number(row.get("records"))}</td>{scores}'
        f'<td class="num">{_score_badge(row.get("overall"))}</td></tr>'
    )


def _node_label(row: Mapping[str, Any]) -> str:
    """A node's code and, when known, its name."""
    name = row.get("node_name")
    return f"{_e(row.get('node'))} {_e(name)}" if name else _e(row.get("node"))


def _depth(value: Any) -> int:
    try:
        return max(0, min(int(value), 8))
    except (TypeError, ValueError):
        return 0


def _indent(depth: int) -> int:
    return 8 + 18 * depth


def _fraction(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _percent(value: Any) -> str:
    """A score as a percentage with one decimal; a dash for no data."""
    number = _fraction(value)
    return "—" if number is None else f"{number * 100:.1f}%"


def _share(value: Any) -> str:
    number = _fraction(value)
    return "—" if number is None else f"{number * 100:g}%"


def _score_level(value: float) -> str:
    return "good" if value >= QUALITY_GOOD else "warn" if value >= QUALITY_WARN else "bad"


def _score_badge(value: Any) -> str:
    number = _fraction(value)
    if number is None:
        return '<span class="muted">—</span>'
    level = _score_level(number)
    return (
        f'<span class="badge score-{level}" style="background:{SCORE_COLOURS[level]}">'
        f"{_percent(number)}</span>"
    )


def _score_level_badge(level: str) -> str:
    return (
        f'<span class="badge score-{level}" style="background:{SCORE_COLOURS[level]}">'
        f"{SCORE_LEVEL_LABELS[level]} {level}</span>"
    )


def _feedback_counts(quality: Mapping[str, Any]) -> str:
    """Items by state and the rows held in quarantine, from the node's status."""
    counts = quality.get("feedback")
    quarantine = quality.get("quarantine")
    if not counts and not quarantine:
        return ""
    parts = []
    if counts:
        overdue = int(counts.get("overdue") or 0)
        overdue_text = f"逾期 overdue: {_number(overdue)}"
        if overdue:
            overdue_text = f'<span class="warn">{overdue_text}</span>'
        parts += [
            f"待处理 open: {_number(counts.get('open', 0))}",
            f"已受理 acknowledged: {_number(counts.get('acknowledged', 0))}",
            overdue_text,
        ]
    if quarantine:
        parts.append(f"隔离 held in quarantine: {_number(quarantine.get('held', 0))}")
    return f'<p class="small" id="feedback-counts">{" · ".join(parts)}</p>'


def _feedback_table(
    items: Sequence[Mapping[str, Any]] | None, counts: Mapping[str, Any], now: datetime | None
) -> str:
    """Open and acknowledged items, oldest first: rules that failed on a record, and users'
    objections, each addressed to the record's owner."""
    if items is None:
        return '<p class="note">此视图不含反馈事项 this view carries no feedback items</p>'
    if not items:
        return '<p class="note">无待处理反馈 no open feedback items</p>'
    head = _header_row(
        [
            _label("编号", "Item"),
            _label("类型", "Kind"),
            _label("记录", "Record"),
            _label("归属", "Owner"),
            _label("原因", "Reason"),
            _label("提出", "Raised"),
            _label("状态", "State"),
        ]
    )
    body = "".join(_feedback_row(item, now) for item in items)
    total = int(counts.get("open") or 0) + int(counts.get("acknowledged") or 0)
    cut = ""
    if len(items) < total:
        cut = (
            f'<p class="small">显示 showing {len(items)} / {total} · '
            "完整列表 full list: <code>tongyuan feedback list</code></p>"
        )
    return _table(head, body, "feedback") + cut


def _feedback_row(item: Mapping[str, Any], now: datetime | None) -> str:
    kind = str(item.get("kind") or "")
    state = str(item.get("state") or "")
    resource = item.get("resource")
    record = f"{_e(item.get('entity'))} {_e(item.get('record_key'))}"
    if resource:
        record += f'<div class="small">{_e(resource)}</div>'
    where = ""
    if item.get("at_owner"):
        where = '<div class="small">在此答复 answer here</div>'
    elif item.get("travels_to"):
        where = f'<div class="small">→ 节点 node {_e(item.get("travels_to"))}</div>'
    responses = item.get("responses") or []
    answered = ""
    if responses and isinstance(responses[-1], Mapping):
        last = responses[-1]
        note = f": {_e(last.get('note'))}" if last.get("note") else ""
        answered = (
            f'<div class="small">{_e(last.get("actor"))} @ {_e(last.get("node"))}{note}</div>'
        )
    overdue = ""
    if item.get("overdue"):
        overdue = (
            f' <span class="badge overdue" style="background:{SCORE_COLOURS["bad"]}">'
            "逾期 overdue</span>"
        )
    css = ' class="overdue"' if item.get("overdue") else ""
    return (
        f'<tr{css} data-item="{_e(item.get("id"))}">'
        f'<td class="small">{_e(item.get("id"))}</td>'
        f'<td class="nowrap">{FEEDBACK_KIND_LABELS.get(kind, "")} {_e(kind)}</td>'
        f"<td>{record}</td>"
        f"<td>{_e(item.get('owner_node'))} {_e(item.get('owner_dept'))}{where}</td>"
        f"<td>{_e(item.get('reason'))}</td>"
        f"<td>{_e(item.get('raised_by'))} @ {_e(item.get('raised_node'))}"
        f"<div>{_when(item.get('raised_at'), now)}</div></td>"
        f'<td><span class="nowrap">{FEEDBACK_STATE_LABELS.get(state, "")} {_e(state)}'
        f"</span>{overdue}{answered}</td>"
        "</tr>"
    )


def _discrepancies_table(rows: Sequence[Mapping[str, Any]], counts: Mapping[str, Any]) -> str:
    """Open discrepancies: where a source and an observation of it disagree."""
    total = int(counts.get("open") or 0)
    if not rows:
        return '<p class="note">无待处理疑问数据 no open discrepancies</p>'
    head = _header_row(
        [
            _label("记录", "Record"),
            _label("属性", "Attribute"),
            _label("权威来源", "Source says"),
            _label("观测值", "Observed"),
            _label("观测方", "Observer"),
            _label("发现于", "Found at"),
        ]
    )
    body = "".join(
        "<tr>"
        f"<td>{_e(d.get('entity'))} {_e(d.get('record_key'))}</td>"
        f"<td>{_e(d.get('attribute'))}</td>"
        f"<td>{_e(d.get('authoritative_value'))} "
        f'<span class="small">{_e(d.get("source_node"))} {_e(d.get("source_dept"))}</span></td>'
        f"<td>{_e(d.get('observed_value'))}</td>"
        f"<td>{_e(d.get('observer_node'))} {_e(d.get('observer_dept'))}</td>"
        f"<td>{_e(', '.join(str(n) for n in d.get('found_at_nodes') or []))}</td>"
        "</tr>"
        for d in rows
    )
    more = len(rows) < total
    shown = f'<p class="small">{len(rows)} / {total} 条 shown</p>' if more else ""
    title = f'<p class="small">疑问数据 discrepancies: {_number(total)}</p>'
    return title + _table(head, body, "discrepancies") + shown


# ----- small formatting helpers ------------------------------------------------------------


def _e(value: Any) -> str:
    """Escaped text for HTML and SVG; a missing value shows as a dash."""
    if value is None or value == "":
        return "—"
    return html.escape(str(value))


def _label(zh: str, en: str) -> str:
    return f'{zh} <span class="en">{en}</span>'


def _table(head: str, rows: str, table_id: str = "") -> str:
    """A table that scrolls sideways on its own rather than widening the page."""
    id_attribute = f' id="{table_id}"' if table_id else ""
    return f'<div class="scroll"><table{id_attribute}>{head}{rows}</table></div>'


def _header_row(columns: Sequence[str | tuple[str, str]]) -> str:
    cells = "".join(
        f'<th class="{c[0]}">{c[1]}</th>' if isinstance(c, tuple) else f"<th>{c}</th>"
        for c in columns
    )
    return f"<tr>{cells}</tr>"


def _number(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, int | float):
        return f"{value:,}"
    return _e(value)


def _duration(seconds: Any, compact: bool = False) -> str:
    """`3.2 s`, `4 min 10 s`, `2 h 5 min`; compact drops the smaller unit (axis labels)."""
    if seconds is None:
        return "—"
    s = float(seconds)
    if s < 60:
        return f"{s:.0f} s" if compact or s >= 10 or s == int(s) else f"{s:.1f} s"
    if s < 3600:
        minutes, rest = divmod(round(s), 60)
        return f"{minutes} min" if compact or not rest else f"{minutes} min {rest} s"
    hours, rest = divmod(round(s) // 60, 60)
    return f"{hours} h" if compact and not rest else f"{hours} h {rest} min"


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _format_time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def _when(value: Any, now: datetime | None) -> str:
    """A time with how long ago it was, relative to the page's own time."""
    moment = _parse_time(value)
    if moment is None:
        return _e(value)
    text = f'<span class="nowrap">{_e(_format_time(moment))}</span>'
    if now is not None:
        ago = max((now - moment).total_seconds(), 0.0)
        text += f'<div class="small">{_duration(round(ago))} 前 ago</div>'
    return text


def _text_units(text: str) -> float:
    """Rough width in half-em units: CJK characters take two."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def _fit(text: str, units: int) -> str:
    """`text` cut to about `units` half-ems with an ellipsis, for labels inside boxes."""
    if _text_units(text) <= units:
        return text
    kept, used = [], 0
    for ch in text:
        used += 2 if ord(ch) > 0x2E80 else 1
        if used > units - 1:
            break
        kept.append(ch)
    return "".join(kept) + "…"
