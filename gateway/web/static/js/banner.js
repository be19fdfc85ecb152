// The banner on every page when the daemon runs on its last good configuration because
// the new one has errors (system.config_status == "last_good"). The problems' keys are
// shown (they are configuration names, the technician's words); their English messages
// are not.

import { byId, clear, h } from "./dom.js";
import { t } from "./i18n.js";
import { store } from "./store.js";

export function renderBanner() {
  const banner = byId("banner");
  const system = store.state.system || {};
  const lastGood = system.config_status === "last_good";
  banner.hidden = !lastGood;
  clear(banner);
  if (!lastGood) return;
  banner.append(h("strong", { text: t("banner.last_good") }));
  const problems = Array.isArray(system.config_problems) ? system.config_problems : [];
  for (const problem of problems.slice(0, 5)) {
    if (problem?.key) {
      banner.append(
        h("span", { class: "small", dataset: { user: "" }, text: t("banner.problem", { key: problem.key }) }),
      );
    }
  }
}
