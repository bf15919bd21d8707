"""The web app (--mode=app): drop a video or a photo and an audio track, watch the lip-synced video.

    python run_talkingface.py --mode=app [--port=7860] [--dataset=MEAD] [--checkpoint=PATH]

A local Gradio page over the Python API (talkingface.api.LipSync, the pipeline of --mode=infer).
Models on offer: the latest HyperLipsBase and HyperLipsHR checkpoint of every dataset folder under
checkpoint_root, the --checkpoint given on the command line, or a file path typed in the page
(app_allow_paths; by default only on a loopback app_host). Inputs are read from the upload folder only.
One generation runs at a time (app_concurrency); the others wait in the queue. It binds to
app_host (127.0.0.1) and sends nothing anywhere: analytics, update checks and hub telemetry are
off, and the page's scripts, styles and fonts are served by the app itself. The Live tab (app_live;
talkingface/live.py, live.js) streams the microphone over WebRTC to routes of the same server.
"""
import copy
import dataclasses
import html
import ipaddress
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time


from talkingface.api import LipSync
from talkingface.live import LIVE_STREAM_SETTINGS, LiveServer
from talkingface.model import inspect
from talkingface.utils.checkpoint import CHECKPOINT_PATTERN, latest_checkpoint
from talkingface.utils.errors import CheckpointError, ConfigError, InputError, TalkingFaceError

logger = logging.getLogger(__name__)

# Set before gradio is imported: no usage analytics, no version check, no Hugging Face Hub calls.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "GRADIO_SSR_MODE": "False"}
PRECISIONS = {"auto (bfloat16 where the CPU has it)": "auto", "bfloat16": True, "float32": False}
SCREENSHOT_ENV = "TALKINGFACE_SCREENSHOT"  # read by tests/integration/test_app.py, which makes docs/app.png
LIVE_SCREENSHOT_ENV = "TALKINGFACE_LIVE_SCREENSHOT"  # the same for the Live tab: docs/images/live.png
# One line for every unusable typed path, so the page cannot tell which server files exist.
TYPED_UNUSABLE = ("the typed checkpoint cannot be used: it is not a readable HyperLips checkpoint file "
                  "(check the path, or clear it to use the list)")


@dataclasses.dataclass
class ModelChoice:
    label: str
    model: str                  # HyperLipsBase | HyperLipsHR
    dataset: str
    checkpoint: str
    base_checkpoint: str = None  # HyperLipsHR: the Base weights under it
    metrics: str = None          # results/<dataset>/<model>/metrics.json of this model, if any


def _step(path):
    match = CHECKPOINT_PATTERN.search(os.path.basename(path))
    return int(match.group(1)) if match else None


def hr_size(path):
    """Output size of an HR decoder checkpoint (128/256/512) from its keys, or None."""
    found = inspect(path)
    return found[1] if found and found[0] == "HRDecoder" else None


def find_models(config):
    """The models the page offers: the --checkpoint given, then for every dataset folder under
    checkpoint_root (this run's dataset first) its latest Base and, on top of that, its latest HR."""
    choices = []
    if config["checkpoint"]:
        choices.append(ModelChoice(f"{config['model']}: {config['checkpoint']}", config["model"], config["dataset"],
                                   str(config["checkpoint"]), config["base_checkpoint"] or None))
    root = config["checkpoint_root"]
    datasets = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) if os.path.isdir(root) else []
    datasets.sort(key=lambda d: d != config["dataset"])
    for dataset in datasets:
        base = latest_checkpoint(os.path.join(root, dataset, "HyperLipsBase"))
        if base is None:
            continue
        metrics = os.path.join(config["results_root"], dataset, "{}", "metrics.json")
        choices.append(ModelChoice(f"Base 128 px · {dataset} · step {_step(base)}", "HyperLipsBase", dataset, base,
                                   metrics=metrics.format("HyperLipsBase")))
        hr = latest_checkpoint(os.path.join(root, dataset, "HyperLipsHR"))
        if hr is not None:
            size = hr_size(hr)
            choices.append(ModelChoice(f"HR {size or '?'} px · {dataset} · step {_step(hr)}", "HyperLipsHR", dataset,
                                       hr, base, metrics=metrics.format("HyperLipsHR")))
    return choices


def no_model_message(config):
    dataset = config["dataset"]
    return (f"no trained model under {config['checkpoint_root']}/: train one with `python run_talkingface.py "
            f"--model=HyperLipsBase --dataset={dataset}` (`make demo` trains one on generated data), or put "
            f"official weights at {config['checkpoint_root']}/{dataset}/HyperLipsBase/checkpoint_step000000000.pth "
            f"(HR: .../HyperLipsHR/), or pass --checkpoint=PATH")


def allow_typed_paths(config):
    """app_allow_paths as a bool: auto allows typed checkpoint paths only on a loopback app_host."""
    value = config.get("app_allow_paths", "auto")
    return bool(value) if value != "auto" else _loopback(config)


def live_enabled(config):
    """app_live as a bool: auto offers the Live tab (a microphone streamed to this server) only on a
    loopback app_host; browsers give pages the microphone only on https or localhost anyway."""
    value = config.get("app_live", "auto")
    return bool(value) if value != "auto" else _loopback(config)


def _loopback(config):
    host = str(config["app_host"]).strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may be reachable from elsewhere
        return False


def _network(path):
    """The kind of network in the checkpoint file `path` (HRDecoder only with its size), or None."""
    found = inspect(path)
    if found is None or (found[0] == "HRDecoder" and found[1] is None):
        return None
    return f"HRDecoder ({found[1]} px)" if found[0] == "HRDecoder" else found[0]


def typed_choice(config, checkpoint, base_checkpoint):
    """A model from a checkpoint path typed in the page: Base or HR, told by its keys. Any unusable
    path (missing, a folder, unreadable, not a checkpoint, another network) gets TYPED_UNUSABLE."""
    checkpoint, base_checkpoint = checkpoint.strip(), (base_checkpoint or "").strip() or None
    network = _network(checkpoint) or ""
    hr = network.startswith("HRDecoder (")  # with its size: an HR decoder we can run
    if not (hr or network == "HyperLipsBase") or (hr and base_checkpoint and
                                                  _network(base_checkpoint) != "HyperLipsBase"):
        raise CheckpointError(TYPED_UNUSABLE)
    model = "HyperLipsHR" if hr else "HyperLipsBase"
    return ModelChoice(f"{model}: {checkpoint}", model, config["dataset"], checkpoint,
                       base_checkpoint if hr else None)


def metrics_markdown(choice):
    """The metrics.json of the chosen model as a small table, when one exists."""
    if choice is None or not choice.metrics or not os.path.isfile(choice.metrics):
        return "No evaluation of this checkpoint yet (`--mode=evaluate` writes one)."
    try:
        with open(choice.metrics, encoding="utf-8") as f:
            results = json.load(f)
        mean = results["mean"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{choice.metrics} could not be read."
    step, own = results.get("global_step"), _step(choice.checkpoint)
    shown = os.path.relpath(choice.metrics)
    shown = choice.metrics if shown.startswith("..") else shown
    head = f"**{shown}**: {results.get('clips', '?')} {results.get('split', '')} clips, step {step}"
    if step is not None and own is not None and step != own:
        head += f" (this checkpoint is step {own})"
    rows = "\n".join(f"| {name} | {_fmt(value)} |" for name, value in mean.items())
    return f"{head}\n\n| metric | mean |\n|---|---|\n{rows}"


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def derived_config(config, choice):
    """The run's config (every setting the user gave) with the chosen model's name and weights."""
    derived = copy.copy(config)
    values = dict(config.final_config_dict, model=choice.model, dataset=choice.dataset, mode="infer",
                  checkpoint=choice.checkpoint, base_checkpoint=choice.base_checkpoint)
    if choice.model == "HyperLipsHR":
        values["img_size"] = hr_size(choice.checkpoint) or values.get("img_size")  # runs at its trained size
    derived.final_config_dict = values
    for attribute in ("model", "dataset"):
        if hasattr(config, attribute):
            setattr(derived, attribute, values[attribute])
    return derived


# silence_mode=source is batch only: a stream would have to hold every frame back by silence_min_ms
# (inference/stream.py), which live mode's latency bound cannot afford.
LIVE_SILENCE_MODES = ("rest", "generate")


@dataclasses.dataclass
class LiveAvatar:
    path: str
    choice: ModelChoice
    silence_mode: str


def _line(text, key=""):
    """The Live tab's status (HTML): the text, and the key its Start button sends."""
    return f'<p id="live_ready_line" data-key="{html.escape(key)}">{html.escape(text)}</p>'


class LoadedModel:
    """The one model held in memory: loaded when first used, replaced when another is picked."""

    def __init__(self, config):
        self.config = config
        self._lock = threading.Lock()
        self._key = self._lipsync = None

    def get(self, choice):
        key = (choice.model, choice.checkpoint, choice.base_checkpoint)
        with self._lock:
            if key != self._key:
                self._key = self._lipsync = None  # free the old one before loading the next
                self._lipsync = LipSync.from_config(derived_config(self.config, choice))
                self._key = key
            return self._lipsync


class App:
    """The page's callbacks, apart from Gradio (so they can be read and tested on their own)."""

    def __init__(self, config, output_dir, choices=None, upload_dir=None):
        self.config = config
        self.output_dir = output_dir
        self.upload_dir = upload_dir or os.path.join(output_dir, "uploads")  # Gradio's GRADIO_TEMP_DIR
        self.choices = find_models(config) if choices is None else choices
        self.loaded = LoadedModel(config)
        self.allow_paths = allow_typed_paths(config)
        self.live_avatars = {}  # the key the page got -> LiveAvatar
        self.live = LiveServer(self.open_live) if live_enabled(config) else None

    def choice(self, label, typed_checkpoint="", typed_base=""):
        if typed_checkpoint and typed_checkpoint.strip():
            if not self.allow_paths:
                raise ConfigError("typed checkpoint paths are off on this server (set app_allow_paths=true "
                                  "to allow them): pick a model from the list")
            return typed_choice(self.config, typed_checkpoint, typed_base)
        for choice in self.choices:
            if choice.label == label:
                return choice
        raise ConfigError("pick a model from the list (or type a checkpoint path)")

    def _check_uploaded(self, *paths):
        """Files are read from Gradio's upload folder only: a request naming another server file
        (or a link out of the folder) is refused."""
        folder = os.path.realpath(self.upload_dir)
        for path in filter(None, paths):
            if os.path.commonpath([folder, os.path.realpath(path)]) != folder:
                raise InputError(f"{os.path.basename(path)} was not uploaded through this page: upload it again")

    def public(self, message, inputs, output=None):
        """`message` as the page may show it: inputs and output by their base names (the names the
        user uploaded), and no path of the app's temp folders."""
        names = {}
        for path in map(os.fspath, filter(None, (*inputs, output))):
            for form in (path, os.path.realpath(path)):
                names[form] = os.path.basename(path)
        for folder in (self.upload_dir, self.output_dir):
            for form in (folder, os.path.realpath(folder)):
                names[form + os.sep], names[form] = "", "the app's temp folder"
        for path in sorted(names, key=len, reverse=True):  # longest first: a folder inside another
            message = message.replace(path, names[path])
        return message

    def prepare_live(self, avatar, label, silence_mode):
        """(key for the page, status line): the avatar's face tracked and encoded once into the
        avatar cache with the chosen model, so that every live session over it starts at once."""
        try:
            if self.live is None:
                raise ConfigError("live mode is off on this server (app_live)")
            if not avatar:
                raise InputError("upload a video or a photo with a face for the avatar")
            if silence_mode not in LIVE_SILENCE_MODES:
                raise ConfigError(f"live silence_mode is one of {', '.join(LIVE_SILENCE_MODES)} (got {silence_mode})")
            self._check_uploaded(avatar)
            choice = self.choice(label)
            with self.loaded.get(choice).stream(avatar, silence_mode=silence_mode, **LIVE_STREAM_SETTINGS):
                pass  # opening the stream fills the avatar cache
        except TalkingFaceError as exc:
            return "", _line("error: " + self.public(str(exc), (avatar,)))
        except Exception as exc:
            logger.exception("live avatar preparation failed")
            first = (str(exc).strip().splitlines() or [""])[0]
            return "", _line(f"error: unexpected {type(exc).__name__}: {self.public(first, (avatar,))} (see the log)")
        key = secrets.token_urlsafe(12)
        self.live_avatars[key] = LiveAvatar(avatar, choice, silence_mode)
        return key, _line(f"avatar ready: {os.path.basename(avatar)} with {choice.label}, silence_mode={silence_mode}. "
                          f"Press Start and speak.", key)

    def open_live(self, body):
        """LiveServer's resolve: (key, open_stream, max_latency_ms) of the avatar the page prepared."""
        avatar = self.live_avatars.get(str(body.get("avatar", "")))
        if avatar is None:
            raise InputError("prepare the avatar first (or again: the server was restarted)")
        if not os.path.isfile(avatar.path):
            raise InputError(f"{os.path.basename(avatar.path)} is no longer in the upload folder: upload it again")
        choice = avatar.choice
        key = (os.path.realpath(avatar.path), choice.model, choice.checkpoint, choice.base_checkpoint)

        def open_stream():  # in the session's thread: a model load or a cache check never blocks the server
            return self.loaded.get(choice).stream(avatar.path, silence_mode=avatar.silence_mode,
                                                  **LIVE_STREAM_SETTINGS)

        return key, open_stream, self.config["live_max_latency_ms"]

    def generate(self, video, photo, use_photo, audio, label, typed_checkpoint, typed_base, batch_size, precision,
                 progress=None):
        """(output video path or None, status line). Errors a user can fix come back as the CLI's
        one line; anything else is logged with its traceback and reported in one line too."""
        started = time.perf_counter()
        inputs, output = (video, photo, audio), None
        try:
            source = photo if use_photo else video
            if not source:
                raise InputError("upload a video or a photo with a face (or record one)")
            if not audio:
                raise InputError("upload or record the driving audio")
            self._check_uploaded(*inputs)
            choice = self.choice(label, typed_checkpoint, typed_base)
            if progress is not None:
                progress(0.0, desc=f"loading {choice.label}")
            try:
                lipsync = self.loaded.get(choice)
            except TalkingFaceError as exc:
                if not (typed_checkpoint and typed_checkpoint.strip()):
                    raise
                logger.warning("typed checkpoint refused: %s", exc)  # the reason for the log, not the page
                raise CheckpointError(TYPED_UNUSABLE) from None
            output = os.path.join(self.output_dir, f"lipsync_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}_"
                                                   f"{threading.get_ident() % 10000}.mp4")

            def report(stage, done, total):
                if progress is not None:
                    share = done / total if total else 0.0
                    progress(0.3 * share if stage == "faces" else 0.3 + 0.7 * share,
                             desc="finding the face" if stage == "faces" else "lip-syncing")

            result = lipsync.run(source, audio, output, progress=report,
                                 infer_batch_size=int(batch_size), infer_bf16=PRECISIONS.get(precision, "auto"))
        except TalkingFaceError as exc:
            return None, "error: " + self.public(str(exc), inputs, output)
        except Exception as exc:  # a bug: the page says so in one line, the log keeps the traceback
            logger.exception("generation failed")
            first = str(exc).strip().splitlines()
            first = self.public(first[0], inputs, output) if first else ""
            return None, f"error: unexpected {type(exc).__name__}: {first} (see the log)"
        found = int(sum(1 for box in result.boxes if box[0] == box[0]))  # NaN rows: no face
        return result.output, (f"done: {result.n_frames} frames ({result.n_frames / 25:.2f} s at 25 fps), "
                               f"face in {found} of {result.n_source_frames} source frames, "
                               f"{time.perf_counter() - started:.1f} s")


def live_page(gr, app, labels):
    """The Live tab: an avatar prepared once, then the microphone over WebRTC (LIVE_JS drives it)."""
    gr.Markdown("Upload a video or a photo with a face and prepare it (its face is tracked and encoded once, "
                "into the avatar cache). Then press Start: your microphone streams to this server and the "
                "lip-synced avatar comes back with your voice. When the machine is slower than real time, "
                "frames are dropped so that the delay stays under live_max_latency_ms.")
    with gr.Row():
        with gr.Column():
            avatar = gr.File(label="Avatar (a video or a photo with a face)", file_types=["video", "image"],
                             type="filepath", elem_id="live_avatar")
            model = gr.Dropdown(labels, value=labels[0] if labels else None, label="Model", elem_id="live_model")
            silence = gr.Radio(list(LIVE_SILENCE_MODES), value=LIVE_SILENCE_MODES[0], elem_id="live_silence",
                               label="Pauses (silence_mode): rest closes the mouth; source is batch only")
            prepare = gr.Button("Prepare avatar", variant="primary", elem_id="live_prepare")
            ready = gr.HTML(_line(""), elem_id="live_ready")
        with gr.Column():
            gr.HTML(LIVE_PANEL, elem_id="live_panel")
    prepare.click(lambda *inputs: app.prepare_live(*inputs)[1], [avatar, model, silence], ready,
                  concurrency_id="lipsync")


# The Live tab's player; LIVE_JS (in the page's head) gives its buttons their work.
LIVE_PANEL = """<div>
<button id="live_start" class="lg primary" style="padding:6px 18px">Start</button>
<button id="live_stop" class="lg secondary" style="padding:6px 18px" disabled>Stop</button>
<video id="live_video" autoplay playsinline style="width:100%;max-height:380px;background:#222;margin-top:8px"></video>
<p id="live_stats">frames/s – · latency – · dropped –</p>
<p id="live_message"></p>
</div>"""
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "live.js"), encoding="utf-8") as _js:
    LIVE_JS = "<script>\n" + _js.read() + "</script>"


def build_page(app):
    import gradio as gr   # lazy: ~4 s to import, and only --mode=app needs it (see serve)

    config = app.config
    labels = [c.label for c in app.choices]
    bf16 = config["infer_bf16"]
    precision = next(name for name, value in PRECISIONS.items() if value == bf16) if bf16 != "auto" else \
        next(iter(PRECISIONS))
    with gr.Blocks(title="HyperLips lip-sync", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("## HyperLips lip-sync\nA video or a photo with a face, and the speech to put on its lips. "
                    "The result keeps the input's size and lasts as long as the audio.")
        with gr.Tabs():
            with gr.Tab("Files", elem_id="files_tab"):
                use_photo = gr.State(False)
                with gr.Row():
                    with gr.Column():
                        with gr.Tabs():
                            with gr.Tab("Video") as video_tab:
                                # no mirroring, sound kept: Gradio would re-encode with a system ffmpeg otherwise
                                video = gr.Video(label="Face video", sources=["upload", "webcam"], elem_id="video_in",
                                                 height=240, buttons=["download"], include_audio=True,
                                                 webcam_options=gr.WebcamOptions(mirror=False))
                            with gr.Tab("Photo") as photo_tab:
                                photo = gr.Image(label="Face photo", sources=["upload", "webcam"], type="filepath",
                                                 format="png", elem_id="photo_in", height=240, buttons=["download"])
                        audio = gr.Audio(label="Driving audio", sources=["upload", "microphone"], type="filepath",
                                         elem_id="audio_in", buttons=["download"])
                        model = gr.Dropdown(labels, value=labels[0] if labels else None, label="Model",
                                            elem_id="model")
                        if app.allow_paths:  # typed paths name server files: offered only where app_allow_paths says
                            with gr.Accordion("Other weights (a checkpoint file of ours or the official ones)",
                                              open=False):
                                typed_checkpoint = gr.Textbox(label="Checkpoint file (Base or HR)",
                                                              placeholder="path/to/file.pth")
                                typed_base = gr.Textbox(
                                    label="Base checkpoint under an HR one (default: the latest Base)")
                        else:  # server-side values the page cannot set
                            typed_checkpoint, typed_base = gr.State(""), gr.State("")
                        with gr.Row():
                            batch_size = gr.Slider(1, 64, value=int(config["infer_batch_size"]), step=1,
                                                   label="Batch size (frames per pass)", elem_id="batch_size")
                            precision_choice = gr.Radio(list(PRECISIONS), value=precision, label="Precision")
                        run = gr.Button("Lip-sync", variant="primary", elem_id="run")
                    with gr.Column():
                        result = gr.Video(label="Result", interactive=False, buttons=["download"], elem_id="result",
                                          height=320)
                        status = gr.Markdown("", elem_id="status")
                        with gr.Accordion("Metrics of the selected model", open=True):
                            metrics = gr.Markdown(metrics_markdown(app.choices[0] if app.choices else None),
                                                  elem_id="metrics")
            if app.live is not None:
                with gr.Tab("Live", elem_id="live_tab"):
                    live_page(gr, app, labels)
        video_tab.select(lambda: False, None, use_photo)
        photo_tab.select(lambda: True, None, use_photo)
        model.change(lambda label: metrics_markdown(next((c for c in app.choices if c.label == label), None)),
                     model, metrics)

        def generate(video, photo, use_photo, audio, label, typed, typed_base, batch, precision,
                     progress=gr.Progress()):
            return app.generate(video, photo, use_photo, audio, label, typed, typed_base, batch, precision, progress)

        run.click(generate, [video, photo, use_photo, audio, model, typed_checkpoint, typed_base, batch_size,
                             precision_choice], [result, status], concurrency_id="lipsync")
    return page


def serve(config):
    """Start the app on app_host:app_port and serve until Ctrl-C or SIGTERM."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    choices = find_models(config)
    if not choices:
        raise CheckpointError(no_model_message(config))
    host, port = str(config["app_host"]), int(config["app_port"])
    concurrency = int(config["app_concurrency"])
    # Results and (unless GRADIO_TEMP_DIR says otherwise) uploads live here until the app stops.
    output_dir = tempfile.mkdtemp(prefix="talkingface_app_")
    upload_dir = os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(output_dir, "uploads"))
    page = app = None
    try:
        try:   # lazy: gradio takes ~4 s to import and only --mode=app needs it
            import gradio  # noqa: F401
        except ImportError:
            raise ConfigError("the app needs gradio: pip install -r requirements.txt") from None
        app = App(config, output_dir, choices, upload_dir)
        page = build_page(app)
        page.queue(default_concurrency_limit=concurrency)
        try:
            # The live endpoints (POST /live/offer ...) are routes of the FastAPI app Gradio serves.
            page.launch(server_name=host, server_port=port, allowed_paths=[output_dir], prevent_thread_lock=True,
                        quiet=True, footer_links=[], show_error=False, head=LIVE_JS if app.live else None,
                        app_kwargs={"routes": app.live.routes()} if app.live else None)
        except OSError:
            raise ConfigError(f"cannot serve on {host}:{port}: the port is taken or the address is not this "
                              f"machine's; pick another with --port=N (or --app_host=...)") from None
        logger.info("web app on http://%s:%d (%d model(s); %d generation(s) at a time)", host, port,
                    len(choices), concurrency)
        # Not page.block_thread(): it catches KeyboardInterrupt (and so run_talkingface's Terminated,
        # SIGTERM) and returns, and the run would end with status 0 and no "terminated:" line.
        while page.is_running:
            time.sleep(0.2)
    finally:
        if app is not None and app.live is not None:
            app.live.close_all()
        if page is not None:
            page.close()
        shutil.rmtree(output_dir, ignore_errors=True)
