"""The web app in a real browser: `run_talkingface.py --mode=app` on a free loopback port, driven by
headless Chromium through selenium (Debian packages chromium and chromium-driver; `.ci/run`
installs them). Random-init Base weights: the point is the page, the queue, the files and the
errors, not the quality of the lips.

With TALKINGFACE_SCREENSHOT=docs/app.png the first case also saves a screenshot of the page, and
with TALKINGFACE_LIVE_SCREENSHOT=docs/images/live.png the live case one of the Live tab streaming.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from talkingface.app import SCREENSHOT_ENV
from talkingface.utils.audio import load_audio, n_video_frames_for_audio
from talkingface.utils.errors import InputError
from talkingface.utils.video import probe_video
from paths import REPO_ROOT

REPO = str(REPO_ROOT)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Waits end as soon as their condition holds (or the app process dies); the limits only stop a hung
# run, so they are generous: a busy 2-core machine can take minutes for what usually takes seconds.
TIMEOUT = 600  # seconds for one generation
WAIT = 180     # seconds for a page element, the app's start, its exit
POOL_THREAD = re.compile(r"AnyIO worker thread|asyncio_\d+")


def _on_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _browser():
    """(chromium, chromedriver, selenium webdriver module), or skip saying what is missing; on CI
    (CI=true, where .ci/run installs them) a missing browser fails the test instead."""
    missing = []
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        missing.append("selenium (pip install -r requirements.txt)")
    chromium = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing.append("chromium / chromedriver (apt-get install chromium chromium-driver)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if _on_ci():
            pytest.fail(f"{message}: CI is set, where the browser tests must run, not skip", pytrace=False)
        pytest.skip(message)
    return chromium, driver, webdriver


def test_a_missing_browser_fails_on_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)   # no chromium, no chromedriver
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium / chromedriver .*CI is set"):
        _browser()
    for unset in ("", "false"):
        monkeypatch.setenv("CI", unset)
        with pytest.raises(pytest.skip.Exception, match="chromium / chromedriver"):
            _browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium / chromedriver"):
        _browser()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_media(tmp_path_factory):
    """A 0.6 s 256x256 clip of the demo face (scikit-image's astronaut photograph, the demo dataset's
    generator), 0.8 s of its synthetic speech as wav, and 1 s of noise with no face in it."""
    from talkingface.data.dataprocess.demo import make_demo_clip, synthesize_speech
    from talkingface.utils.audio import save_wav
    from talkingface.utils.video import VideoWriter

    folder = tmp_path_factory.mktemp("app_media")
    paths = {"video": folder / "face.mp4", "audio": folder / "speech.wav", "noface": folder / "noface.mp4"}
    make_demo_clip(paths["video"], 0, 0.6, 256)
    save_wav(paths["audio"], synthesize_speech(0.8, np.random.default_rng(1)))
    with VideoWriter(paths["noface"], 25) as writer:
        for frame in np.random.default_rng(0).integers(0, 256, (25, 120, 160, 3), dtype=np.uint8):
            writer.write(frame)
    return paths


@pytest.fixture(scope="module")
def server(random_base_checkpoint, tmp_path_factory):
    """The app as a user starts it, on checkpoints/demo/HyperLipsBase/ (random weights), in a
    process of its own. Stopped with SIGTERM at the end, after every test of the module used it: it
    must exit with 143 and "terminated: the app stopped ..." as its last line (checked here, so that
    no second app process is started just for that)."""
    root = random_base_checkpoint["root"]
    port = _free_port()
    log = open(tmp_path_factory.mktemp("app_log") / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "run_talkingface.py"), "--mode=app",
                             "--dataset=demo", f"--port={port}", "--device=cpu", "--infer_batch_size=4",
                             f"--checkpoint_root={root / 'checkpoints'}", f"--results_root={root / 'results'}"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + WAIT
    while True:
        try:
            urllib.request.urlopen(url, timeout=10).read()
            break
        except OSError:
            log.seek(0)
            assert proc.poll() is None, f"the app exited: {log.read()}"
            assert time.time() < deadline, f"the app did not answer on {url}: {log.read()}"
            time.sleep(0.5)
    yield {"url": url, "proc": proc, "log": log, "port": port, "root": root}
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=WAIT) == 143
        log.seek(0)
        assert log.read().strip().splitlines()[-1].startswith("terminated: the app stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def _headless_chromium(*extra_args):
    """Headless Chromium logging every request (the tests check the page fetches only 127.0.0.1)."""
    chromium, driver, webdriver = _browser()
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,980", "--disable-background-networking", "--no-first-run", *extra_args):
        options.add_argument(arg)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(60)
    return browser


@pytest.fixture(scope="module")
def browser(server):
    browser = _headless_chromium()
    yield browser
    browser.quit()


def _find(browser, css, timeout=WAIT, condition=lambda elements: elements, server=None):
    """The elements of `css` once `condition` holds; fails at once if the `server` process died."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        elements = browser.find_elements(By.CSS_SELECTOR, css)
        if condition(elements):
            return elements
        if server is not None and server["proc"].poll() is not None:
            server["log"].seek(0)
            raise AssertionError(f"the app exited while waiting for {css}: {server['log'].read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{css} did not appear within {timeout} s; status: {_status(browser)}")


def _status(browser):
    from selenium.webdriver.common.by import By

    found = browser.find_elements(By.CSS_SELECTOR, "#status")
    return found[0].text.strip() if found else ""


def _submit(browser, server, video, audio):
    """Open the page, upload the two files, press Lip-sync; returns the status line once shown."""
    browser.get(server["url"])
    _find(browser, "#run")
    _find(browser, "#video_in input[type=file]")[0].send_keys(str(video))
    _find(browser, "#video_in video")  # uploaded and shown
    _find(browser, "#audio_in input[type=file]")[0].send_keys(str(audio))
    _find(browser, "#audio_in audio")
    _find(browser, "#run")[0].click()
    progress = set()

    def finished(found):
        text = browser.execute_script("return document.body.innerText")
        progress.update(word for word in ("finding the face", "lip-syncing") if word in text)
        return found and found[0].text.strip().startswith(("done:", "error:"))

    _find(browser, "#status", timeout=TIMEOUT, condition=finished, server=server)
    return _status(browser), progress


def _requested_hosts(browser):
    hosts = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            address = message["params"]["request"]["url"]
            if address.startswith(("http:", "https:", "ws:", "wss:")):
                hosts.add(address.split("/")[2].rsplit(":", 1)[0])
    return hosts


@pytest.mark.slow
def test_generates_a_video_with_the_audio_length_and_input_size(server, browser, demo_media, tmp_path):
    status, progress = _submit(browser, server, demo_media["video"], demo_media["audio"])
    assert status.startswith("done:"), status
    assert "lip-syncing" in progress  # the progress bar's stage, shown while it ran
    source = _find(browser, "#result video", condition=lambda v: v and v[0].get_attribute("src"))[0]
    downloaded = tmp_path / "result.mp4"
    with urllib.request.urlopen(source.get_attribute("src"), timeout=WAIT) as response:
        downloaded.write_bytes(response.read())
    info, video = probe_video(downloaded), probe_video(demo_media["video"])
    n_audio = n_video_frames_for_audio(len(load_audio(demo_media["audio"])))
    assert (info.width, info.height) == (video.width, video.height)
    assert info.n_frames == n_audio and abs(info.duration - n_audio / 25) < 1e-3 and info.has_audio
    assert "No evaluation of this checkpoint yet" in _find(browser, "#metrics")[0].text
    assert _requested_hosts(browser) == {"127.0.0.1"}  # the page fetched nothing from elsewhere
    screenshot = os.environ.get(SCREENSHOT_ENV)
    if screenshot:
        _save_small_png(browser, screenshot)


@pytest.mark.slow
def test_a_file_without_a_face_shows_the_cli_error_line(server, browser, demo_media, random_base_checkpoint,
                                                       tmp_path):
    from talkingface import LipSync

    with pytest.raises(InputError) as info:  # what the CLI prints, as "error: <message>"
        LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu")(
            demo_media["noface"], demo_media["audio"], tmp_path / "o.mp4")
    status, _ = _submit(browser, server, demo_media["noface"], demo_media["audio"])
    assert status == f"error: {info.value}"
    assert server["proc"].poll() is None  # the server lives on
    urllib.request.urlopen(server["url"], timeout=WAIT).read()


def _save_small_png(browser, path):
    """The page as a 256-colour PNG (a few tens of KB) for the README."""
    import io

    from PIL import Image

    browser.execute_script("window.scrollTo(0, 0)")
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert os.path.getsize(path) < 200_000
    assert np.asarray(image).std() > 5  # not a blank page


@pytest.mark.slow
def test_a_taken_port_is_a_one_line_error(server, monkeypatch, capsys):
    """run_talkingface.main in this process (a second app process would cost seconds of imports)."""
    import run_talkingface
    from talkingface.app import OFFLINE_ENV

    for key in (*OFFLINE_ENV, "GRADIO_TEMP_DIR"):  # the app sets them: put them back afterwards
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(server["root"])
    code = run_talkingface.main(["--mode=app", "--dataset=demo", f"--port={server['port']}", "--device=cpu",
                                 f"--checkpoint_root={server['root'] / 'checkpoints'}",
                                 f"--results_root={server['root'] / 'results'}"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"error: cannot serve on 127.0.0.1:{server['port']}: the port is taken")


def test_without_a_checkpoint_the_app_says_what_to_train(workdir, capsys):
    import run_talkingface

    assert run_talkingface.main(["--mode=app", "--dataset=demo"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: no trained model under checkpoints/")
    assert "python run_talkingface.py --model=HyperLipsBase --dataset=demo" in lines[-1]


def test_models_and_metrics_offered(workdir, random_base_checkpoint):
    """Every dataset's latest Base and HR (its size from the checkpoint's keys) and the metrics.json
    of the model picked, with the step it was evaluated at."""
    import torch

    from talkingface.app import find_models, metrics_markdown
    from talkingface.config import Config
    from talkingface.model import build_network
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file

    shutil.copytree(random_base_checkpoint["root"] / "checkpoints", workdir / "checkpoints")
    save_checkpoint_file({"state_dict": build_network("HRDecoder", 2).state_dict()},
                         checkpoint_path("checkpoints/demo/HyperLipsHR", 7))
    os.makedirs("checkpoints/MEAD/HyperLipsHR")  # an HR without a Base under it is not offered
    torch.save({}, checkpoint_path("checkpoints/MEAD/HyperLipsHR", 1))
    choices = find_models(Config("HyperLipsBase", "MEAD", config_dict={"mode": "app"}))
    assert [c.label for c in choices] == ["Base 128 px · demo · step 1", "HR 256 px · demo · step 7"]
    assert choices[1].base_checkpoint == choices[0].checkpoint
    assert "No evaluation" in metrics_markdown(choices[1])
    os.makedirs("results/demo/HyperLipsHR")
    with open("results/demo/HyperLipsHR/metrics.json", "w") as f:
        json.dump({"global_step": 5, "split": "test", "clips": 3, "mean": {"PSNR": 30.25, "LSE-C": "inf"}}, f)
    table = metrics_markdown(choices[1])
    assert "| PSNR | 30.25 |" in table and "| LSE-C | inf |" in table
    assert "3 test clips, step 5 (this checkpoint is step 7)" in table


@pytest.mark.slow
def test_photo_with_a_typed_hr_checkpoint(workdir, demo_media, random_base_checkpoint):
    """The page's callback without the browser: a photo, an HR decoder typed as a path (its size read
    from the file), a Base typed under it, float32; the result has the photo's size."""
    import cv2

    from talkingface.app import App
    from talkingface.config import Config
    from talkingface.model import build_network
    from talkingface.utils.checkpoint import save_checkpoint_file
    from talkingface.utils.video import iter_frames

    uploads = workdir / "uploads"  # the App's upload folder: it reads inputs from there only
    uploads.mkdir()
    photo = uploads / "face.png"
    cv2.imwrite(str(photo), next(iter_frames(demo_media["video"])))
    audio = shutil.copy(demo_media["audio"], uploads)
    save_checkpoint_file({"state_dict": build_network("HRDecoder", 1).state_dict()}, "hr.pth")
    app = App(Config("HyperLipsBase", "demo", config_dict={"mode": "app", "device": "cpu",
                                                           "checkpoint_root": "none"}), str(workdir))
    stages = []
    output, status = app.generate(None, str(photo), True, audio, None, "hr.pth",
                                  random_base_checkpoint["path"], 8, "float32",
                                  progress=lambda share, desc: stages.append(desc))
    assert status.startswith("done: 20 frames"), status
    info = probe_video(output)
    assert (info.width, info.height, info.n_frames) == (256, 256, 20)
    assert app.loaded.get(app.choice(None, "hr.pth", random_base_checkpoint["path"]))._syncer.hr is not None
    assert stages[0].startswith("loading HyperLipsHR") and stages[-1] == "lip-syncing"
    assert app.generate(None, None, False, audio, None, "hr.pth", "", 8, "auto")[1] == \
        "error: upload a video or a photo with a face (or record one)"


def _uploaded(app, name, data=b"not a video"):
    """A file as Gradio stores an upload: <upload folder>/<hash>/<the user's file name>."""
    folder = os.path.join(app.upload_dir, "0123abcd")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("host, value, allowed", [("0.0.0.0", "auto", False), ("127.0.0.1", "auto", True),
                                                  ("127.3.0.1", "auto", True), ("localhost", "auto", True),
                                                  ("::1", "auto", True), ("example.org", "auto", False),
                                                  ("0.0.0.0", True, True), ("127.0.0.1", False, False)])
def test_typed_paths_allowed_only_on_loopback_unless_set(host, value, allowed):
    from talkingface.app import allow_typed_paths

    assert allow_typed_paths({"app_host": host, "app_allow_paths": value}) is allowed


def test_typed_paths_off_are_refused_in_one_line(tmp_path, random_base_checkpoint):
    from talkingface.app import App
    from talkingface.utils.errors import ConfigError

    app = App({"app_host": "0.0.0.0", "app_allow_paths": "auto", "dataset": "demo"}, str(tmp_path), [])
    with pytest.raises(ConfigError, match="typed checkpoint paths are off on this server"):
        app.choice(None, random_base_checkpoint["path"])
    status = app.generate(_uploaded(app, "face.mp4"), None, False, _uploaded(app, "speech.wav"), None,
                          random_base_checkpoint["path"], "", 4, "auto")[1]
    assert status.startswith("error: typed checkpoint paths are off on this server (set app_allow_paths=true")
    assert "\n" not in status and random_base_checkpoint["path"] not in status


def test_the_page_shows_typed_paths_only_when_allowed(tmp_path):
    from talkingface.app import App, build_page

    def textboxes(host):
        page = build_page(App({"app_host": host, "app_allow_paths": "auto", "dataset": "demo",
                               "infer_bf16": "auto", "infer_batch_size": 4}, str(tmp_path), []))
        return [c["props"].get("label") for c in page.config["components"] if c["type"] in ("textbox", "accordion")
                and c["props"].get("label") != "Metrics of the selected model"]

    assert len(textboxes("127.0.0.1")) == 3  # the "Other weights" accordion and its two textboxes
    assert textboxes("0.0.0.0") == []


def test_every_unusable_typed_path_gets_the_same_line(tmp_path, _random_expert_file):
    """No oracle for server files: missing, a folder, random bytes, text, another network's
    checkpoint and unreadable weights all read the same, with no path and no reason."""
    import torch

    from talkingface.app import TYPED_UNUSABLE, App, ModelChoice
    from talkingface.config import Config

    app = App(Config("HyperLipsBase", "demo", config_dict={"mode": "app", "device": "cpu",
                                                           "checkpoint_root": "none"}), str(tmp_path),
              [ModelChoice("Base", "HyperLipsBase", "demo", "unused.pth")])
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "text.pth").write_text("root:x:0:0:root:/root:/bin/bash\n")
    torch.save({"state_dict": {"hyper_control_net.hnet0.lin1.weight": torch.zeros(1)}}, tmp_path / "broken.pth")
    video, audio = _uploaded(app, "face.mp4"), _uploaded(app, "speech.wav")
    typed = [tmp_path / "missing.pth", tmp_path, tmp_path / "random.pth", tmp_path / "text.pth",
             _random_expert_file,  # a SyncNet checkpoint
             tmp_path / "broken.pth"]  # looks like a Base one; loading it fails
    statuses = {app.generate(video, None, False, audio, "Base", str(path), "", 4, "auto")[1] for path in typed}
    assert statuses == {f"error: {TYPED_UNUSABLE}"}


def test_error_lines_name_the_upload_not_server_paths(tmp_path, random_base_checkpoint, monkeypatch):
    from talkingface.app import App, ModelChoice
    from talkingface.config import Config
    from talkingface.utils.audio import save_wav

    output_dir = tmp_path / "app_tmp"
    app = App(Config("HyperLipsBase", "demo", config_dict={"mode": "app", "device": "cpu",
                                                           "checkpoint_root": "none"}), str(output_dir),
              [ModelChoice("Base", "HyperLipsBase", "demo", random_base_checkpoint["path"])])
    video, audio = _uploaded(app, "my clip.mp4", np.random.default_rng(0).bytes(3000)), _uploaded(app, "speech.wav")
    save_wav(audio, np.zeros(8000, np.float32))
    status = app.generate(video, None, False, audio, "Base", "", "", 4, "float32")[1]
    assert status.startswith("error: ") and "my clip.mp4" in status, status
    assert str(output_dir) not in status and "/" not in status, status

    class Broken:  # a bug whose message names every path it had
        def run(self, source, audio, output, **kwargs):
            raise RuntimeError(f"cannot mix {source} and {audio} into {output} under {app.upload_dir}")

    monkeypatch.setattr(app.loaded, "get", lambda choice: Broken())
    status = app.generate(video, None, False, audio, "Base", "", "", 4, "float32")[1]
    assert status.startswith("error: unexpected RuntimeError: cannot mix my clip.mp4 and speech.wav into lipsync_")
    assert "/" not in status, status


def test_inputs_are_read_from_the_upload_folder_only(tmp_path):
    from talkingface.app import App

    app = App({"app_host": "127.0.0.1", "app_allow_paths": "auto", "dataset": "demo"}, str(tmp_path / "app"), [])
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"private")
    link = os.path.join(os.path.dirname(_uploaded(app, "face.mp4")), "voice.wav")
    os.symlink(secret, link)  # inside the folder, pointing out of it
    for video, audio, name in ((_uploaded(app, "face.mp4"), str(secret), "secret.wav"),
                               (_uploaded(app, "face.mp4"), link, "voice.wav"),
                               (str(secret), _uploaded(app, "speech.wav"), "secret.wav"),
                               (os.path.join(app.upload_dir, "..", "..", "secret.wav"), link, "secret.wav")):
        status = app.generate(video, None, False, audio, None, "", "", 4, "auto")[1]
        assert status == f"error: {name} was not uploaded through this page: upload it again"


@pytest.fixture(scope="module")
def live_browser(server, demo_media, tmp_path_factory):
    """Chromium whose microphone is the demo speech (looped), allowed without a prompt."""
    from talkingface.utils.audio import save_wav

    speech = tmp_path_factory.mktemp("live_mic") / "mic.wav"
    save_wav(speech, np.tile(load_audio(demo_media["audio"]), 4))  # 3.2 s, 16 kHz PCM
    browser = _headless_chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                 f"--use-file-for-fake-audio-capture={speech}",
                                 "--autoplay-policy=no-user-gesture-required")
    yield browser
    browser.quit()


def _live_stats(server, session=None):
    query = f"?session={session}" if session else ""
    with urllib.request.urlopen(f"{server['url']}live/stats{query}", timeout=WAIT) as response:
        return json.load(response)


def _post(server, path, body):
    request = urllib.request.Request(f"{server['url']}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.slow
def test_live_tab_streams_the_microphone_and_stops_cleanly(server, live_browser, demo_media):
    """The Live tab over WebRTC: a fake microphone plays the demo speech, lip-synced frames come
    back and are counted as the page shows them (requestVideoFrameCallback), the page reports
    frames/s, latency and drops; a second client of the same avatar and model is told it is
    queued; Stop leaves no session and no thread on the server; nothing but 127.0.0.1 is fetched."""
    from selenium.webdriver.common.by import By

    from talkingface.app import LIVE_SCREENSHOT_ENV

    browser = live_browser
    browser.get(server["url"])
    tab = _find(browser, "button[role=tab]", condition=lambda tabs: [t for t in tabs if t.text.strip() == "Live"])
    next(t for t in tab if t.text.strip() == "Live").click()
    _find(browser, "#live_avatar input[type=file]")[0].send_keys(str(demo_media["video"]))
    _find(browser, "#live_prepare")[0].click()
    ready = _find(browser, "#live_ready_line", timeout=TIMEOUT, server=server,
                  condition=lambda found: found and found[0].text.startswith(("avatar ready", "error")))[0]
    assert ready.text.startswith("avatar ready: face.mp4"), ready.text
    key = ready.get_attribute("data-key")
    threads_before = set(_live_stats(server)["threads"])

    browser.find_element(By.ID, "live_start").click()

    def streaming(found):
        stats = json.loads(found[0].get_attribute("data-stats") or "{}") if found else {}
        return stats.get("shown", 0) >= 5 and stats.get("latency_ms") is not None

    line = _find(browser, "#live_stats", timeout=TIMEOUT, condition=streaming, server=server)[0]
    stats = json.loads(line.get_attribute("data-stats"))
    assert stats["state"] == "running" and stats["frames"] >= 5 and stats["dropped"] >= 0, stats
    assert 0 < stats["latency_ms"] <= stats["max_latency_ms"], stats
    assert line.text.startswith("frames/s ") and " · dropped " in line.text and "latency" in line.text
    status, answer = _post(server, "live/offer", {"sdp": "v=0", "type": "offer", "avatar": key})
    assert status == 409 and answer["error"].startswith("queued: "), answer
    screenshot = os.environ.get(LIVE_SCREENSHOT_ENV)
    if screenshot:
        _save_small_png(browser, screenshot)

    browser.find_element(By.ID, "live_stop").click()
    deadline = time.time() + WAIT
    # the server's shared pools (AnyIO's for Gradio, asyncio's default executor where aiortc encodes)
    # keep their idle workers; a session's own threads (its stream, aiortc's decoder) must be gone
    while (after := _live_stats(server))["sessions"] or \
            {name for name in after["threads"] if not POOL_THREAD.fullmatch(name)} - threads_before:
        assert time.time() < deadline, f"left after Stop: {after}, before: {sorted(threads_before)}"
        time.sleep(0.2)
    assert not [name for name in after["threads"] if name.startswith("live-") or name.endswith("-decoder")]
    assert _find(browser, "#live_message")[0].text == "stopped"
    assert _requested_hosts(browser) == {"127.0.0.1"}


@pytest.mark.parametrize("host, value, enabled", [("127.0.0.1", "auto", True), ("0.0.0.0", "auto", False),
                                                  ("0.0.0.0", True, True), ("127.0.0.1", False, False)])
def test_live_is_offered_only_on_loopback_unless_set(tmp_path, host, value, enabled):
    from talkingface.app import App, build_page

    app = App({"app_host": host, "app_live": value, "app_allow_paths": "auto", "dataset": "demo",
               "infer_bf16": "auto", "infer_batch_size": 4}, str(tmp_path), [])
    assert (app.live is not None) is enabled
    ids = {c["props"].get("elem_id") for c in build_page(app).config["components"]}
    assert ("live_prepare" in ids) is enabled and "run" in ids


def test_live_avatar_errors_are_one_line(tmp_path):
    from talkingface.app import App

    app = App({"app_host": "127.0.0.1", "app_allow_paths": "auto", "dataset": "demo"}, str(tmp_path), [])
    secret = tmp_path / "elsewhere.mp4"
    secret.write_bytes(b"x")
    for avatar, silence, line in ((None, "rest", "upload a video or a photo with a face for the avatar"),
                                  (_uploaded(app, "face.mp4"), "source", "live silence_mode is one of rest, generate"),
                                  (str(secret), "rest", "elsewhere.mp4 was not uploaded through this page")):
        key, status = app.prepare_live(avatar, None, silence)
        assert key == "" and f"error: {line}" in status and 'data-key=""' in status, status
    with pytest.raises(InputError, match="^prepare the avatar first"):
        app.open_live({"avatar": "made-up"})
    off = App({"app_host": "0.0.0.0", "app_allow_paths": "auto", "dataset": "demo"}, str(tmp_path), [])
    assert "error: live mode is off on this server (app_live)" in off.prepare_live(None, None, "rest")[1]
