// Loudspeakers: what plays now and what waits, play a clip by priority, stop, the master
// volume, upload a clip, and the emergency button (which asks first: it cuts in on
// everything, at every loudspeaker of the village).

import { byId, clear, h, setOptions } from "../dom.js";
import { num, t } from "../i18n.js";
import { duration, showError, showInfo, time } from "../format.js";
import * as api from "../api.js";
import { setClips, store } from "../store.js";

function itemName(item) {
  return item?.clip || item?.url || item?.name || "—";
}

function priorityText(priority) {
  return priority ? t(`priority.${priority}`) : "";
}

export function mount(ctx) {
  const reply = byId("pa-reply");
  const volume = byId("pa-volume");
  const volumeDefault = byId("pa-volume-default");
  const master = byId("pa-master");
  let masterTouched = false;

  const showVolume = () => {
    byId("pa-volume-out").textContent = volumeDefault.checked ? "" : num(Number(volume.value));
    volume.disabled = volumeDefault.checked;
  };
  volume.addEventListener("input", showVolume);
  volumeDefault.addEventListener("change", showVolume);
  master.addEventListener("input", () => {
    masterTouched = true;
    byId("pa-master-out").textContent = num(Number(master.value));
  });

  byId("pa-play-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const clip = byId("pa-clip").value;
    if (!clip) {
      ctx.say(reply, t("pa.choose_clip"), "error");
      return;
    }
    const args = {
      clip,
      priority: byId("pa-priority").value,
      repeat: Math.min(20, Math.max(1, Math.round(Number(byId("pa-repeat").value) || 1))),
      chime: byId("pa-chime").checked,
    };
    if (!volumeDefault.checked) args.volume = Number(volume.value);
    ctx.run("pa.play", args, reply, byId("pa-play"));
  });
  byId("pa-stop").addEventListener("click", (event) =>
    ctx.run("pa.stop", { scope: "current" }, reply, event.currentTarget),
  );
  byId("pa-stop-all").addEventListener("click", (event) =>
    ctx.run("pa.stop", { scope: "all" }, reply, event.currentTarget),
  );
  byId("pa-master-set").addEventListener("click", async (event) => {
    const result = await ctx.run(
      "pa.volume",
      { volume: Number(master.value) },
      reply,
      event.currentTarget,
    );
    if (result?.status === "done") masterTouched = false;
  });
  byId("pa-emergency").addEventListener("click", async (event) => {
    const clip = byId("pa-clip").value;
    if (!clip) {
      ctx.say(reply, t("pa.choose_clip"), "error");
      return;
    }
    const ok = await ctx.confirm(t("pa.emergency_title"), t("pa.emergency_confirm", { clip }));
    if (!ok) {
      ctx.say(reply, t("pa.emergency_cancelled"), "info");
      return;
    }
    ctx.run(
      "pa.play",
      { clip, priority: "emergency", volume: 100, chime: true },
      reply,
      event.currentTarget,
    );
  });

  const uploadForm = byId("pa-upload-form");
  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = uploadForm.querySelector(".reply");
    const file = byId("pa-upload-file").files[0];
    const name = byId("pa-upload-name").value.trim();
    if (!file || !name) return;
    const button = byId("pa-upload");
    button.disabled = true;
    showInfo(status, t("pa.uploading"));
    try {
      const data = await api.uploadClip(name, file);
      showInfo(status, t("pa.uploaded", { name: data?.clip?.name ?? name }));
      status.dataset.status = "done";
      uploadForm.reset();
      await refreshClips();
    } catch (error) {
      showError(status, error);
      if (error.body?.error?.message) status.textContent += ` — ${error.body.error.message}`;
    } finally {
      button.disabled = false;
    }
  });

  async function refreshClips() {
    try {
      const data = await api.clips();
      setClips(data?.clips || []);
    } catch {
      // the library stays as it was; the play form still works with known clips
    }
  }

  function renderClips() {
    const clips = [...store.clips].sort((a, b) => String(a.name).localeCompare(String(b.name)));
    setOptions(
      byId("pa-clip"),
      clips.map((clip) => ({ value: clip.name, label: clip.name })),
    );
    const list = clear(byId("pa-clips"));
    for (const clip of clips) {
      const bits = [];
      if (clip.duration_s !== undefined && clip.duration_s !== null) {
        bits.push(duration(clip.duration_s));
      }
      if (clip.format) bits.push(clip.format);
      if (clip.bytes) bits.push(t("unit.kb", { v: num(clip.bytes / 1024, 0) }));
      list.append(
        h(
          "li",
          { dataset: { clip: clip.name } },
          h("strong", { text: clip.name }),
          " ",
          h("span", { class: "muted small", text: bits.join(" · ") }),
        ),
      );
    }
    if (!clips.length) list.append(h("li", { class: "muted", text: t("pa.no_clips") }));
  }

  function render() {
    const pa = store.state.pa || {};
    const now = byId("pa-now");
    clear(now);
    if (pa.playing) {
      now.dataset.playing = itemName(pa.playing);
      now.append(
        h("strong", { class: "now-clip", text: itemName(pa.playing) }),
        " ",
        h("span", {
          class: `badge prio-${pa.playing.priority}`,
          text: priorityText(pa.playing.priority),
        }),
        h("span", {
          class: "muted small",
          text: ` ${t("pa.since", { time: time(pa.playing.started_at) })}`,
        }),
      );
    } else {
      delete now.dataset.playing;
      now.append(h("span", { class: "muted", text: t("pa.silent") }));
    }
    const device = [];
    if (pa.device) device.push(t("pa.device", { state: t(`device.${pa.device}`) }));
    if (typeof pa.amplifier === "boolean") {
      device.push(t(pa.amplifier ? "pa.amp_on" : "pa.amp_off"));
    }
    if (typeof pa.volume === "number") device.push(t("pa.volume_is", { v: pa.volume }));
    if (pa.underruns) device.push(t("pa.underruns", { n: pa.underruns }));
    byId("pa-device").textContent = device.join(" · ");
    if (typeof pa.volume === "number" && !masterTouched) {
      master.value = String(pa.volume);
    }
    byId("pa-master-out").textContent = num(Number(master.value));
    const queue = clear(byId("pa-queue"));
    for (const item of pa.queue || []) {
      queue.append(
        h(
          "li",
          {},
          h("span", { text: itemName(item) }),
          " ",
          h("span", { class: `badge prio-${item.priority}`, text: priorityText(item.priority) }),
        ),
      );
    }
    byId("pa-queue-empty").hidden = Boolean(pa.queue?.length);
    renderClips();
    showVolume();
  }

  return { render, show: refreshClips };
}
