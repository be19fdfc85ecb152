// Loudspeakers: what plays now and what waits, play a clip by priority, stop, the master
// volume, upload a clip, the clip library (listen on the phone, delete), and the
// emergency button (which asks first: it cuts in on everything, at every loudspeaker of
// the village). Each card answers in its own status line, next to the button used.
//
// Clips are shown by their label (any language, "Bản tin sáng"); the id (bản-tin-sáng ->
// "ban-tin-sang") is what commands carry.

import { byId, clear, h, setOptions } from "../dom.js";
import { has, num, t } from "../i18n.js";
import { bytes, clipName, duration, relayName, showError, showInfo, time } from "../format.js";
import * as api from "../api.js";
import { setClips, store } from "../store.js";

function itemName(item) {
  if (item?.clip) return clipName(item.clip);
  return item?.url || item?.name || "—";
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
  let freeBytes = null;

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
  const stopReply = byId("pa-stop-reply");
  byId("pa-stop").addEventListener("click", (event) =>
    ctx.run("pa.stop", { scope: "current" }, stopReply, event.currentTarget),
  );
  byId("pa-stop-all").addEventListener("click", (event) =>
    ctx.run("pa.stop", { scope: "all" }, stopReply, event.currentTarget),
  );
  byId("pa-master-set").addEventListener("click", async (event) => {
    const result = await ctx.run(
      "pa.volume",
      { volume: Number(master.value) },
      byId("pa-volume-reply"),
      event.currentTarget,
    );
    if (result?.status === "done") masterTouched = false;
  });
  const emergencyReply = byId("pa-emergency-reply");
  byId("pa-emergency").addEventListener("click", async (event) => {
    const clip = byId("pa-clip").value;
    if (!clip) {
      ctx.say(emergencyReply, t("pa.choose_clip"), "error");
      return;
    }
    const ok = await ctx.confirm(
      t("pa.emergency_title"),
      t("pa.emergency_confirm", { clip: clipName(clip) }),
    );
    if (!ok) {
      ctx.say(emergencyReply, t("pa.emergency_cancelled"), "info");
      return;
    }
    ctx.run(
      "pa.play",
      { clip, priority: "emergency", volume: 100, chime: true },
      emergencyReply,
      event.currentTarget,
    );
  });

  const uploadForm = byId("pa-upload-form");
  const progress = byId("pa-upload-progress");
  const chosen = byId("pa-upload-chosen");
  const showChosen = () => {
    const file = byId("pa-upload-file").files[0];
    if (file) {
      delete chosen.dataset.i18n;
      chosen.textContent = file.name;
    } else {
      chosen.dataset.i18n = "pa.no_file";
      chosen.textContent = t("pa.no_file");
    }
  };
  byId("pa-upload-file").addEventListener("change", showChosen);
  uploadForm.addEventListener("reset", () => setTimeout(showChosen));
  uploadForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = byId("pa-upload-reply");
    const file = byId("pa-upload-file").files[0];
    const name = byId("pa-upload-name").value.trim();
    if (!name || !file) {
      ctx.say(status, t(name ? "pa.choose_file_first" : "pa.name_first"), "error");
      return;
    }
    const button = byId("pa-upload");
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    showInfo(status, t("pa.uploading", { pct: 0 }));
    try {
      const data = await api.uploadClip(name, file, (pct) => {
        progress.value = pct;
        status.textContent = pct < 100 ? t("pa.uploading", { pct }) : t("pa.checking");
      });
      await refreshClips();
      const saved = data?.clip?.label || data?.clip?.name || name;
      showInfo(status, t("pa.uploaded", { name: saved }), "done");
      uploadForm.reset();
    } catch (error) {
      showError(status, error);
    } finally {
      button.disabled = false;
      progress.hidden = true;
    }
  });

  async function refreshClips() {
    try {
      const data = await api.clips();
      freeBytes = typeof data?.free_bytes === "number" ? data.free_bytes : null;
      setClips(data?.clips || []);
    } catch {
      // the library stays as it was; the play form still works with known clips
    }
  }

  async function remove(clip, button, line) {
    const ok = await ctx.confirm(t("pa.delete"), t("pa.delete_confirm", { clip: clipName(clip.name) }));
    if (!ok) {
      ctx.say(line, t("pa.delete_cancelled"), "info");
      return;
    }
    const label = clipName(clip.name);
    const result = await ctx.run("pa.clip.delete", { clip: clip.name }, line, button);
    if (result?.status === "done") {
      await refreshClips();
      ctx.say(byId("pa-upload-reply"), t("pa.deleted", { clip: label }), "done");
    }
  }

  function clipItem(clip) {
    const bits = [];
    if (clip.duration_s !== undefined && clip.duration_s !== null) {
      bits.push(duration(clip.duration_s));
    }
    if (clip.format) bits.push(t(`format.${clip.format}`));
    if (clip.bytes) bits.push(bytes(clip.bytes));
    if (clip.bundled) bits.push(t("pa.bundled"));
    const line = h("p", { class: "reply clip-reply", role: "status", "aria-live": "polite" });
    const audio = h("audio", {
      controls: true,
      preload: "none",
      src: api.clipAudioUrl(clip.name),
      "aria-label": `${t("pa.listen")}: ${clipName(clip.name)}`,
    });
    const actions = [];
    if (!clip.bundled) {
      const button = h("button", { type: "button", class: "btn-small clip-delete", text: t("pa.delete") });
      button.addEventListener("click", () => remove(clip, button, line));
      actions.push(button);
    }
    return h(
      "li",
      { class: "clip", dataset: { clip: clip.name } },
      h(
        "div",
        { class: "clip-head" },
        h("strong", { class: "clip-label", dataset: { user: "" }, text: clipName(clip.name) }),
        actions,
      ),
      h("span", { class: "muted small", text: bits.join(" · ") }),
      h("span", { class: "small listen", text: t("pa.listen") }),
      audio,
      line,
    );
  }

  function renderClips() {
    const clips = [...store.clips].sort((a, b) =>
      clipName(a.name).localeCompare(clipName(b.name)),
    );
    setOptions(
      byId("pa-clip"),
      clips.map((clip) => ({ value: clip.name, label: clipName(clip.name) })),
    );
    const list = clear(byId("pa-clips"));
    for (const clip of clips) list.append(clipItem(clip));
    if (!clips.length) list.append(h("li", { class: "muted", text: t("pa.no_clips") }));
    const free = byId("pa-free");
    free.hidden = freeBytes === null;
    free.textContent = freeBytes === null ? "" : t("pa.free", { v: bytes(freeBytes) });
  }

  function render(what) {
    const pa = store.state.pa || {};
    const now = byId("pa-now");
    clear(now);
    if (pa.playing) {
      now.dataset.playing = pa.playing.clip || pa.playing.url || "";
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
    if (pa.device && has(`device.${pa.device}`)) {
      device.push(t("pa.device", { state: t(`device.${pa.device}`) }));
    }
    if (typeof pa.amplifier === "boolean") {
      device.push(t(pa.amplifier ? "pa.amp_on" : "pa.amp_off"));
    }
    if (typeof pa.volume === "number") device.push(t("pa.volume_is", { v: pa.volume }));
    if (pa.underruns) device.push(t("pa.underruns", { n: pa.underruns }));
    byId("pa-device").textContent = device.join(" · ");
    const amp = Object.entries(store.state.owners || {}).find(([, owner]) => owner === "pa");
    byId("pa-amp").hidden = !amp;
    byId("pa-amp").textContent = amp ? t("pa.amp_relay", { relay: relayName(amp[0]) }) : "";
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
    // Not on every snapshot: rebuilding the list would stop a clip someone is listening to.
    if (what === "all" || what === "clips" || what === "lang") renderClips();
    showVolume();
  }

  return { render, show: refreshClips };
}
