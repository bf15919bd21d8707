// The web app's Live tab (talkingface/app.py LIVE_PANEL): the microphone to POST /live/offer over
// WebRTC, the lip-synced video and audio back, the server's figures every 0.5 s. Same origin only.
(() => {
  const live = {pc: null, mic: null, session: null, timer: null, retry: null, shown: 0, on: false};
  const $ = (id) => document.getElementById(id);
  const say = (text) => { const line = $("live_message"); if (line) line.textContent = text; };
  const key = () => { const line = $("live_ready_line"); return line ? line.dataset.key || "" : ""; };

  async function start() {
    if (!key()) { say("prepare an avatar first"); return; }
    live.on = true; live.shown = 0;
    $("live_start").disabled = true; $("live_stop").disabled = false;
    try {
      live.mic = await navigator.mediaDevices.getUserMedia(
        {audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1}});
    } catch (error) { stop("error: no microphone: " + error.message); return; }
    await connect();
  }

  async function connect() {
    live.retry = null;
    if (!live.on) return;
    const pc = live.pc = new RTCPeerConnection({iceServers: []});  // no STUN: host candidates only
    live.mic.getTracks().forEach((track) => pc.addTrack(track, live.mic));
    pc.addTransceiver("video", {direction: "recvonly"});
    const remote = new MediaStream();
    pc.ontrack = (event) => {
      remote.addTrack(event.track);
      const video = $("live_video");
      if (video.srcObject !== remote) video.srcObject = remote;
      video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => { if (pc.connectionState === "failed") stop("error: the connection failed"); };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((done) => {  // one POST: the offer carries every candidate
      if (pc.iceGatheringState === "complete") return done();
      pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") done(); });
      setTimeout(done, 3000);
    });
    const response = await fetch("/live/offer", {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type, avatar: key()})});
    const answer = await response.json();
    if (!response.ok) {
      pc.close(); live.pc = null; say(answer.error);
      if (response.status === 409 && live.on) live.retry = setTimeout(connect, 2000); else stop(answer.error);
      return;
    }
    live.session = answer.session;
    say("live: speak");
    await pc.setRemoteDescription({sdp: answer.sdp, type: answer.type});
    const video = $("live_video");
    if (video.requestVideoFrameCallback) {
      const shown = () => { live.shown += 1; if (live.on) video.requestVideoFrameCallback(shown); };
      video.requestVideoFrameCallback(shown);
    }
    live.timer = setInterval(poll, 500);
  }

  async function poll() {
    if (!live.session) return;
    const stats = await (await fetch("/live/stats?session=" + encodeURIComponent(live.session))).json();
    stats.shown = live.shown;
    const line = $("live_stats");
    line.dataset.stats = JSON.stringify(stats);
    line.textContent = `frames/s ${stats.fps ?? "–"} · latency ${stats.latency_ms ?? "–"} ms ` +
      `(max ${stats.max_latency_ms ?? "–"} ms) · dropped ${stats.dropped ?? 0} · shown ${live.shown} · ` +
      `render ${stats.render_ms ?? "–"} ms/frame`;
    if (stats.state === "failed") stop(stats.error);
  }

  async function stop(message) {
    live.on = false;
    clearInterval(live.timer); clearTimeout(live.retry);
    if (live.pc) live.pc.close();
    if (live.mic) live.mic.getTracks().forEach((track) => track.stop());
    const session = live.session;
    live.pc = live.mic = live.session = null;
    $("live_start").disabled = false; $("live_stop").disabled = true;
    if (session) {
      await fetch("/live/stop", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({session})});
    }
    say(message || "stopped");
  }

  document.addEventListener("click", (event) => {
    const id = event.target && event.target.id;
    if (id === "live_start") start();
    if (id === "live_stop") stop();
  });
})();
