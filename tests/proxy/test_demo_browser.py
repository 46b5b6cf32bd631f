"""The browser demo and the JS client in real headless Chromium, against the real proxy and the
fake vLLM.

Chromium's fake microphone plays ``samples/mid.wav`` in real time, so the exact audio the page
captures cannot be known in advance. The tests therefore check the page against what actually
crossed the wire: the text shown is the concatenation of the deltas the page received, equals the
``transcription.done`` text, and is what the fake predicts for exactly the audio it was sent.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from playwright.async_api import Browser, Page, WebSocket, async_playwright, expect

from devtools.fake_vllm import _WORDS, FakeVllm, predict_text
from tests.harness import FRAME_BYTES, RunningProxy, load_pcm, serve_proxy

pytestmark = pytest.mark.timeout(120)  # a hang guard; the file runs in well under a minute

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ENSURE_CHROMIUM = ROOT / "scripts" / "ensure_chromium.sh"
MIC_WAV = ROOT / "samples" / "mid.wav"
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 20_000  # Playwright's hang guard for each expectation
FAKE_WORDS = frozenset(_WORDS)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed by scripts/ensure_chromium.sh when missing."""
    if not CHROMIUM.exists():
        result = subprocess.run(
            [str(ENSURE_CHROMIUM)], capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0 or not CHROMIUM.exists():
            pytest.fail(f"could not install chromium:\n{result.stderr[-2000:]}")
    assert shutil.which(str(CHROMIUM))
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    args = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={MIC_WAV}",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--headless=new",
    ]
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(chromium), headless=True, args=args)
        try:
            yield launched
        finally:
            await launched.close()


class Wire:
    """Every WebSocket frame the page sends and receives, and every URL it requests."""

    def __init__(self, page: Page) -> None:
        # Text frames parsed; binary frames (audio) as bytes.
        self.sent: list[dict[str, Any] | bytes] = []
        self.received: list[dict[str, Any]] = []
        self.requests: list[str] = []
        page.on("websocket", self._on_socket)
        page.on("request", lambda request: self.requests.append(request.url))

    def _on_socket(self, socket: WebSocket) -> None:
        self.requests.append(socket.url)
        socket.on(
            "framesent",
            lambda data: self.sent.append(data if isinstance(data, bytes) else orjson.loads(data)),
        )
        socket.on("framereceived", lambda data: self.received.append(orjson.loads(data)))

    def of(self, kind: str, request_id: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.received
            if e["type"] == kind and (request_id is None or e["request_id"] == request_id)
        ]


def appended_audio(fake: FakeVllm) -> list[bytes]:
    """The audio chunks the fake vLLM received, in order (the proxy forwards them as is)."""
    return [
        base64.b64decode(event["audio"])
        for _, event in fake.received
        if event.get("type") == "input_audio_buffer.append"
    ]


def match_in_reference(captured: bytes, reference: bytes) -> float:
    """The best normalised cross-correlation of ``captured`` against any stretch of
    ``reference`` (both 16 kHz PCM16): 1.0 for an exact copy."""
    cap = np.frombuffer(captured, np.int16).astype(np.float64)
    ref = np.frombuffer(reference, np.int16).astype(np.float64)
    n = len(cap)
    assert 0 < n <= len(ref)
    size = 1 << (len(ref) + n).bit_length()
    spectrum = np.fft.rfft(ref, size) * np.conj(np.fft.rfft(cap, size))
    correlation = np.fft.irfft(spectrum, size)[: len(ref) - n + 1]
    windows = np.concatenate([[0.0], np.cumsum(ref**2)])
    energy = np.sqrt((windows[n:] - windows[:-n]) * np.sum(cap**2))
    return float(np.max(correlation / np.maximum(energy, 1e-9)))


def share_matching(captured: bytes, reference: bytes, window_bytes: int = 16000) -> float:
    """The share of ``captured``'s half-second windows that are a near copy (above 0.95) of
    some stretch of ``reference``."""
    windows = [
        captured[start : start + window_bytes]
        for start in range(0, len(captured) - window_bytes + 1, window_bytes)
    ]
    assert windows, "less than half a second of audio was captured"
    matching = sum(match_in_reference(window, reference) > 0.95 for window in windows)
    return matching / len(windows)


async def test_demo_page_transcribes_the_microphone(
    browser: Browser, proxy: RunningProxy, fake: FakeVllm
) -> None:
    page = await browser.new_page(viewport={"width": 1000, "height": 760})
    wire = Wire(page)
    await page.goto(proxy.http_url + "/")
    await page.fill("#key", proxy.api_key)
    await page.click("#start")
    await expect(page.locator("#status")).to_have_text("recording", timeout=WAIT_MS)
    # Live partial text grows while the microphone is still streaming (six words or more).
    await expect(page.locator("#live")).to_have_text(
        re.compile(r"^\s*(\S+\s+){5}\S"), timeout=WAIT_MS
    )
    live_text = await page.locator("#live").text_content()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "demo-live.png"), full_page=True)
    await page.click("#stop")
    row = page.locator("#utterances tr.utterance.done")
    await expect(row).to_have_count(1, timeout=WAIT_MS)

    await page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

    request_id = await row.get_attribute("data-request-id")
    shown = await row.locator("td.text").text_content()
    ttfw = await row.locator("td.ttfw").text_content()
    finalization = await row.locator("td.final").text_content()
    audio = await row.locator("td.audio").text_content()
    problem_hidden = await page.locator("#problem").is_hidden()
    await page.close()

    # The page shows exactly the text that came over the wire, and it is the fake's words.
    deltas = [e["payload"]["delta"] for e in wire.of("transcription.delta", request_id)]
    (done,) = wire.of("transcription.done", request_id)
    assert shown == "".join(deltas) == done["payload"]["text"]
    assert live_text
    assert shown.startswith(live_text)
    words = shown.split()
    assert words
    assert set(words) <= FAKE_WORDS

    # The browser sent the utterance as the protocol asks: open, 80 ms binary frames, final.
    opening = next(
        i
        for i, m in enumerate(wire.sent)
        if isinstance(m, dict) and m.get("request_id") == request_id
    )
    mine = wire.sent[opening:]
    first, last = mine[0], mine[-1]
    assert isinstance(first, dict)
    assert isinstance(last, dict)
    assert first["type"] == last["type"] == "input_audio_buffer.commit"
    assert first["payload"] == {"final": False}
    assert last["payload"] == {"final": True}
    assert last["request_id"] == request_id
    frames = mine[1:-1]
    assert all(isinstance(m, bytes) for m in frames)
    sizes = [len(m) for m in frames]
    assert sizes[:-1] == [FRAME_BYTES] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= FRAME_BYTES
    assert sizes[-1] % 2 == 0

    # That audio reached the fake byte for byte (16 kHz mono goes up as it came), and the
    # text is the fake's prediction for it.
    pcm = b"".join(appended_audio(fake))
    assert pcm == b"".join(m for m in frames if isinstance(m, bytes))
    # And it is the microphone's sound, resampled to 16 kHz: stretches of mid.wav itself (a
    # wrong rate or noise instead of the file would not line up with it). Compared half a
    # second at a time: a browser starved of CPU drops bits of its audio capture, which
    # shifts everything after the gap.
    assert share_matching(pcm, load_pcm("mid.wav")) >= 0.5
    assert done["payload"]["text"] == predict_text(pcm)
    assert done["payload"]["audio_ms"] == len(pcm) // 32

    # Timings are shown; the audio length is the done event's.
    assert re.fullmatch(r"\d+ ms", ttfw or ""), ttfw
    assert re.fullmatch(r"\d+ ms", finalization or ""), finalization
    assert audio == f"{done['payload']['audio_ms'] / 1000:.1f} s"

    # No error shown, and nothing was loaded from anywhere but the proxy.
    assert wire.of("error") == []
    assert problem_hidden
    origins = {re.sub(r"^(\w+)://([^/]+).*$", r"\2", url) for url in wire.requests}
    assert origins == {proxy.http_url.removeprefix("http://")}
    # The key is in no URL (finding 7 of issue 16): the page traded it for a token.
    assert not [url for url in wire.requests if proxy.api_key in url or "api_key" in url]
    assert any(url.endswith("/api/tokens") for url in wire.requests)


async def test_demo_page_shows_unauthorized(
    browser: Browser, proxy: RunningProxy, fake: FakeVllm
) -> None:
    page = await browser.new_page()
    wire = Wire(page)
    await page.goto(proxy.http_url + "/")
    await page.fill("#key", "not-the-key")
    async with page.expect_response("**/api/tokens") as answer:
        await page.click("#start")
    refusal = await (await answer.value).json()
    # The key is refused where the page trades it for a token: no WebSocket is opened.
    await expect(page.locator("#error-code")).to_have_text("unauthorized", timeout=WAIT_MS)
    await expect(page.locator("#status")).to_have_text("refused 401")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "demo-unauthorized.png"), full_page=True)
    assert await page.locator("#problem").is_visible()
    message = await page.locator("#error-message").text_content()
    assert message
    assert "not-the-key" not in message
    assert await page.locator("#start").is_enabled()
    assert await page.locator("#utterances tr.utterance").count() == 0
    assert message == refusal["error"]["message"]
    assert message.startswith("Wrong API key")
    assert "X-API-Key" not in message  # no header advice for a person who typed a key
    assert wire.of("error") == []
    assert wire.sent == []
    assert fake.connections_total == 0
    await page.close()


async def test_demo_page_asks_for_a_key_before_asking_the_server(
    browser: Browser, proxy: RunningProxy, fake: FakeVllm
) -> None:
    page = await browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await page.goto(proxy.http_url + "/")
    await page.fill("#key", "  ")
    await page.click("#start")
    await expect(page.locator("#error-code")).to_have_text("no key", timeout=WAIT_MS)
    message = await page.locator("#error-message").text_content()
    assert message == "Type an API key into the key box, then press Start."
    assert not [url for url in requests if "/api/" in url]
    assert fake.connections_total == 0
    await page.close()


# Bounds a promise inside the page, so that a missing event fails the test at once.
WITHIN_JS = """(promise, what) => Promise.race([promise, new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`no ${what} within 15 s`)), 15000))])"""


@pytest.mark.parametrize("binary", [True, False])
async def test_js_client_round_trip(
    browser: Browser, proxy: RunningProxy, fake: FakeVllm, binary: bool
) -> None:
    """The module alone: a scripted utterance, in binary frames or JSON appends, gives exactly
    the fake's predicted text, and the fake receives the audio byte for byte."""
    pcm = load_pcm("short.wav")
    page = await browser.new_page()
    wire = Wire(page)
    await page.goto(proxy.http_url + "/")
    result = await page.evaluate(
        """async ({url, key, audio, withinJs, binary}) => {
            const within = eval(withinJs);
            const { VoxtralClient } = await import("/js/voxtral-client.js");
            const bytes = Uint8Array.from(atob(audio), (c) => c.charCodeAt(0));
            const client = new VoxtralClient(url, { apiKey: key, sessionId: "js-1", binary });
            const deltas = [];
            client.on("delta", (d) => deltas.push(d));
            const created = await within(client.connect(), "session.created");
            const pong = await within(client.ping({ n: 7 }), "pong");
            const requestId = client.startUtterance("r1");
            // Uneven pieces, as Int16Array and as ArrayBuffer, exercise the 80 ms chunker.
            let chunks = 0;
            for (let i = 0, n = 0; i < bytes.length; i += 1000, n++) {
                const piece = bytes.slice(i, i + 1000);
                chunks += client.sendPcm(n % 2 ? new Int16Array(piece.buffer) : piece.buffer);
            }
            const end = await within(client.finish(), "transcription.done");
            client.close();
            return { created, pong, requestId, deltas, chunks, end };
        }""",
        {
            "url": proxy.ws_url,
            "key": proxy.api_key,
            "audio": base64.b64encode(pcm).decode(),
            "withinJs": WITHIN_JS,
            "binary": binary,
        },
    )
    await page.close()

    audio_frames = [m for m in wire.sent if isinstance(m, bytes)]
    assert bool(audio_frames) == binary
    assert b"".join(appended_audio(fake)) == pcm
    assert result["created"]["audio"] == {"format": "pcm16", "sample_rate": 16000, "channels": 1}
    assert result["pong"] == {"n": 7}
    assert result["requestId"] == "r1"
    assert result["chunks"] == len(pcm) // FRAME_BYTES
    end = result["end"]
    assert end["type"] == "transcription.done"
    assert end["session_id"] == "js-1"
    assert end["request_id"] == "r1"
    assert end["payload"]["text"] == predict_text(pcm)
    assert "".join(d["delta"] for d in result["deltas"]) == end["payload"]["text"]
    assert {d["requestId"] for d in result["deltas"]} == {"r1"}
    assert end["payload"]["audio_ms"] == len(pcm) // 32


async def test_js_client_end_and_refusal(browser: Browser, proxy: RunningProxy) -> None:
    """end() finalizes the open utterance and resolves on close 1000; a wrong key rejects
    connect() with a ConnectError carrying 4001 and the server's error."""
    pcm = load_pcm("short.wav")
    page = await browser.new_page()
    await page.goto(proxy.http_url + "/")
    result = await page.evaluate(
        """async ({url, key, audio, withinJs}) => {
            const within = eval(withinJs);
            const { connect, ConnectError } = await import("/js/voxtral-client.js");
            const bytes = Uint8Array.from(atob(audio), (c) => c.charCodeAt(0));
            const client = await within(connect(url, { apiKey: key }), "session.created");
            const done = [];
            client.on("done", (d) => done.push(d));
            client.startUtterance("open-at-end");
            client.sendPcm(bytes.buffer);
            const close = await within(client.end(), "close after end");
            let refused = null;
            try {
                await within(connect(url, { apiKey: "wrong" }), "refusal");
            } catch (err) {
                refused = { isConnectError: err instanceof ConnectError, code: err.code,
                            error: err.error && err.error.code };
            }
            return { done, close, refused };
        }""",
        {
            "url": proxy.ws_url,
            "key": proxy.api_key,
            "audio": base64.b64encode(pcm).decode(),
            "withinJs": WITHIN_JS,
        },
    )
    await page.close()

    (done,) = result["done"]
    assert done["requestId"] == "open-at-end"
    assert done["text"] == predict_text(pcm)
    assert result["close"] == {"code": 1000, "reason": "", "error": None}
    assert result["refused"] == {"isConnectError": True, "code": 4001, "error": "unauthorized"}


async def test_demo_assets_are_served(proxy: RunningProxy) -> None:
    async with httpx.AsyncClient(base_url=proxy.http_url) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        references = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
        assert "demo/demo.js" in references
        for path in references:
            if path.startswith("data:"):
                continue
            assert "//" not in path, f"{path}: the page must load everything from the proxy"
            asset = await http.get("/" + path)
            assert asset.status_code == 200, path
        for path in ("/demo/pcm-worklet.js", "/js/voxtral-client.js"):
            asset = await http.get(path)
            assert asset.status_code == 200, path
            assert "javascript" in asset.headers["content-type"]


async def test_demo_page_off(fake: FakeVllm) -> None:
    async with (
        serve_proxy(fake.url, demo_page=False) as proxy,
        httpx.AsyncClient(base_url=proxy.http_url) as http,
    ):
        for path in ("/", "/demo/demo.js", "/js/voxtral-client.js"):
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/healthz")).status_code == 200
