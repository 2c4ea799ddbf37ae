"""report.html: the page builder, and the page of a real experiment opened in headless Chromium.

The browser (``conftest.Browser``) is driven over the Chrome DevTools Protocol on
``--remote-debugging-pipe``. Without Chromium the browser tests skip with the reason, except on
CI (``CI=true``), where they fail: ``.ci/run`` installs it.
"""

from __future__ import annotations

import base64

import pytest
from PIL import Image as PILImage

from deadzone.errors import DeadzoneError
from deadzone.report import html
from deadzone.report.build import build


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, crystallize_experiment):
    root = tmp_path_factory.mktemp("report")
    out = crystallize_experiment(root, ("full", "frozen", "crystal", "random"))
    assert build([out], study=True).errors == []  # the study's claims, as asked for
    return out


@pytest.mark.browser
def test_report_opens_in_chromium_whole_and_readable_on_a_phone(experiment, browser):
    page = experiment / "report.html"
    session = browser.open(page.as_uri(), 1280, 900)
    facts = browser.facts(session)
    assert browser.problems(session) == []
    assert facts["images"] and all(width > 0 for width in facts["images"]), facts
    assert facts["claims"] and set(facts["claims"]) <= {"confirmed", "refuted", "undetermined"}
    assert len(facts["claims"]) == 3  # frozen, crystal, random: the study's three claims
    assert facts["tables"] >= 2 and facts["contents"] >= 3
    assert facts["scrollingTables"] == 0, facts  # at 1280 px no table is cut
    pixels = browser.screenshot(session)
    assert pixels.shape == (900, 1280)
    assert pixels.std() > 5 and (pixels < 128).mean() > 0.005  # text and lines, not blank

    browser.resize(session, 390, 844)  # a phone: the page never scrolls sideways, tables do
    phone = browser.facts(session)
    assert phone["innerWidth"] == 390
    assert phone["pageWidth"] <= phone["innerWidth"], phone
    assert phone["scrollingTables"] >= 1
    assert max(phone["shownImages"]) <= 390 and phone["columns"] == 1, phone  # one column
    assert browser.screenshot(session).std() > 5
    assert browser.problems(session) == []


@pytest.mark.browser
def test_the_browser_check_sees_a_broken_page(tmp_path, browser):
    """The checks above can fail: a script error, an external request, a broken image."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><img src="missing.png"><img src="http://127.0.0.1:9/x.png">'
        "<script>console.error('boom')</script></body></html>"
    )
    session = browser.open(bad.as_uri(), 800, 600)
    problems = " ".join(browser.problems(session))
    assert "boom" in problems and "http://127.0.0.1:9/x.png" in problems
    assert "failed request" in problems
    widths = browser.evaluate(session, "[...document.images].map(i => i.naturalWidth)")
    assert widths == [0, 0]


# --- the page builder --------------------------------------------------------------------------


def png(path, width=3, height=2) -> None:
    image = PILImage.new("RGB", (width, height), (200, 10, 10))
    image.save(path, format="PNG")


def test_page_escapes_text_embeds_images_and_is_deterministic(tmp_path):
    png(tmp_path / "a.png")
    page = html.Page(
        'Title <&> "quoted"',
        study=True,
        claims=[html.Claim("A < B", "study 1%", "refuted", "here `x` & y")],
        sections=[
            html.Section(
                "S <1>",
                [
                    html.Paragraph("<script>alert(1)</script> and `code <b>`"),
                    html.Table(["h<", "v"], [["a&b", html.Cell("worse", "worse")]], "cap>"),
                    html.Image(tmp_path / "a.png", 'alt "x"'),
                    html.Section("Sub", [html.Paragraph("deeper")]),
                ],
            )
        ],
    )
    text = html.render(page)
    assert text == html.render(page)
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<code>code &lt;b&gt;</code>" in text and "<title>Title &lt;&amp;&gt;" in text
    assert (
        '<td class="refuted" data-label="On this model">refuted</td>' in text
        and '<td class="worse">worse</td>' in text
    )
    assert "<th>h&lt;</th>" in text and "<caption>cap&gt;</caption>" in text
    assert 'width="3" height="2"' in text and 'alt="alt &quot;x&quot;"' in text
    encoded = base64.b64encode((tmp_path / "a.png").read_bytes()).decode()
    assert f'src="data:image/png;base64,{encoded}"' in text
    assert "<h3>Sub</h3>" in text and "http" not in text.replace("http-equiv", "")
    assert "overflow-x:auto" in text and "max-width:100%" in text

    path = html.write(page, tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8") == text
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left


def test_page_refuses_bad_parts(tmp_path):
    with pytest.raises(ValueError, match="claim verdict 'maybe'"):
        html.Claim("c", "s", "maybe", "n")
    with pytest.raises(ValueError, match="not a CSS class name"):
        html.Cell("x", 'a" onclick="b')
    with pytest.raises(ValueError, match="a row has 1 cells for 2 headers"):
        html.Table(["a", "b"], [["only"]])
    (tmp_path / "fake.png").write_text("not a png")
    for image, message in [("fake.png", "is not a PNG file"), ("gone.png", "cannot read image")]:
        page = html.Page("t", sections=[html.Section("s", [html.Image(tmp_path / image, "x")])])
        with pytest.raises(DeadzoneError, match=message):
            html.render(page)


def test_a_page_opens_with_its_contents_and_what_to_do_and_never_repeats_a_heading():
    sections = [
        html.Section("Freeze of `m`", [html.Section("frozen", [html.Paragraph("a")])]),
        html.Section("Freeze of `m`", [html.Section("frozen", [html.Paragraph("b")])]),
    ]
    summary = [html.Section("What to do next", [html.Items(["Freeze L1.", "Run `x`."])])]
    text = html.render(html.Page("t", sections=sections, summary=summary))
    assert "<ul><li>Freeze L1.</li><li>Run <code>x</code>.</li></ul>" in text
    assert text.index("What to do next") < text.index("<h2>Freeze of <code>m</code></h2>")
    assert "<h2>Freeze of <code>m</code> (2)</h2>" in text and "<h3>frozen (2)</h3>" in text
    headings = [h.split("</h")[0] for h in text.split("<h")[2:] if h[0] in "23"]
    assert len(headings) == len(set(headings)), headings
    nav = text.split('<nav id="contents"')[1].split("</nav>")[0]
    assert nav.count("<li>") == 3 and 'href="#what-to-do-next"' in nav
    ids = [part.split('"')[0] for part in text.split('<section id="')[1:]]
    assert len(ids) == len(set(ids)) == 5
    assert [i for i in ids if f'href="#{i}"' in nav] == ["what-to-do-next", *ids[1::2]]


def test_the_studys_claims_appear_only_on_a_page_that_asks_for_them():
    claim = html.Claim("Freezing L4 c_proj costs nothing", "-0.2%", "confirmed", "Here: ...")
    plain = html.render(html.Page("t", claims=[claim]))
    assert "study" not in plain.lower() and "Freezing L4" not in plain
    asked = html.render(html.Page("t", claims=[claim], study=True))
    assert '<section id="claims">' in asked and "Freezing L4 c_proj costs nothing" in asked
    assert "On this model" in asked


def test_claims_judged_on_different_models_or_data_name_them():
    claims = [
        html.Claim("c", "s", "confirmed", "n", where="model `m`, data `a.jsonl`"),
        html.Claim("c", "s", "refuted", "n", where="model `m`, data `b.jsonl`"),
    ]
    text = html.render(html.Page("t", claims=claims, study=True))
    assert "On this model" not in text and "here</h2>" not in text
    assert '<td data-label="Judged on">model <code>m</code>, data <code>b.jsonl</code></td>' in text
