"""The live view in a real browser: headless Chromium driven by Selenium, against a real `run`
replaying in real time a short video made here: a label read at ~0.5 s, a torn label that is located
but read by nothing at ~3 s."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.media_factory import qr_image, write_gray_h264
from tests.web_fixture import PASSWORD, Web, wait_for

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (./dev.sh setup installs them)")
PHONE_WIDTH = 390
SIZE = (1280, 720)  # the camera's picture, wider than the phone: the page must scale it down
CID = "CID-LIVE-1"


def make_video(path: Path, fps: int = 15) -> Path:
    """6 s: the label in view 0.5-1.7 s, then a QR label with a corner torn off 3.0-4.5 s."""
    w, h = SIZE
    good = qr_image(CID, 5)
    torn = qr_image("CID-TORN-1", 6)
    n = torn.shape[0]
    cv2.fillPoly(torn, [np.array([[n, n], [n - int(0.75 * n), n], [n, n - int(0.75 * n)]], np.int32)], 120)
    blank = np.full((h, w), 120, np.uint8)
    with_good, with_torn = blank.copy(), blank.copy()
    with_good[200:200 + good.shape[0], 300:300 + good.shape[1]] = good
    with_torn[200:200 + n, 700:700 + n] = torn

    def frames() -> Iterator[np.ndarray]:
        for i in range(6 * fps):
            t = i / fps
            yield with_good if 0.5 <= t <= 1.7 else with_torn if 3.0 <= t <= 4.5 else blank

    return write_gray_h264(path, frames(), SIZE, fps)


def browser(password: str) -> webdriver.Chrome:
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={PHONE_WIDTH},844"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to see the answers' status codes
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    # a phone screen, and the password as the browser would send it after the Basic-auth prompt
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    import base64

    token = base64.b64encode(f"technician:{password}".encode()).decode()
    drv.execute_cdp_cmd("Network.enable", {})
    drv.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    drv.set_page_load_timeout(20)
    return drv


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    video = make_video(tmp_path / "line.mp4")
    with Web(tmp_path, video, password=True, loop=True) as w:  # the server outlives the first pass
        yield w


@pytest.mark.slow
def test_live_view_in_chromium(web: Web) -> None:
    wrong = browser("not-the-password")
    try:
        wrong.get(web.url + "/")
        assert not wrong.find_elements("id", "live")  # Chromium waits at its password prompt, page not shown
        answers = [json.loads(e["message"])["message"] for e in wrong.get_log("performance")]
        statuses = [m["params"]["response"]["status"] for m in answers if m["method"] == "Network.responseReceived"
                    and m["params"]["response"]["url"] == web.url + "/"]
        assert statuses and set(statuses) == {401}
    finally:
        wrong.quit()

    drv = browser(PASSWORD)
    try:
        drv.get(web.url + "/")
        assert drv.title == "edge-agent live view"
        js = drv.execute_script
        # the picture arrives and keeps changing
        wait_for(lambda: js("return document.getElementById('live').naturalWidth") == SIZE[0], 10, "a picture")
        shown = int(js("return document.getElementById('live').dataset.frames"))
        wait_for(lambda: int(js("return document.getElementById('live').dataset.frames")) >= shown + 3, 10,
                 "the picture to update")
        wait_for(lambda: js("return document.getElementById('conn').textContent") == "live", 5, "status polling")
        # a label passes: its event shows, with its thumbnail
        item = wait_for(lambda: drv.find_elements("css selector", f"#events li[data-cid='{CID}']"), 20,
                        "the first label's event on the page")[0]
        assert CID in item.text
        wait_for(lambda: js(f"const i = document.querySelector(\"#events li[data-cid='{CID}'] img\");"
                            "return i && i.complete && i.naturalWidth > 0"), 10, "the event's thumbnail")
        assert js("return document.querySelectorAll('#rates tr.r').length") == 3
        # a phone screen: nothing wider than it
        assert js("return window.innerWidth") == PHONE_WIDTH
        assert js("return document.documentElement.scrollWidth") <= PHONE_WIDTH
        # the torn label nothing reads ends up in the no-read gallery
        wait_for(lambda: js("const i = document.querySelector('#noreads figure img');"
                            "return i && i.complete && i.naturalWidth > 0"), 30, "a no-read in the gallery")
        assert js("return document.documentElement.scrollWidth") <= PHONE_WIDTH
        shot = os.environ.get("LIVE_VIEW_SCREENSHOT")
        if shot:
            drv.save_screenshot(shot)
    finally:
        drv.quit()
