// Login and first run. With no password set yet the page asks for the one-time setup code
// the daemon printed to its log (event web.setup_code) and a new password: nobody claims
// the gateway just by reaching its page first.

import { byId } from "../dom.js";
import { has, t } from "../i18n.js";
import { showError, showInfo } from "../format.js";
import * as api from "../api.js";

export function mount(ctx) {
  const loginForm = byId("login-form");
  const setupForm = byId("setup-form");

  loginForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const reply = loginForm.querySelector(".reply");
    const button = loginForm.querySelector("button");
    button.disabled = true;
    showInfo(reply, t("auth.logging_in"));
    try {
      await api.login(byId("login-password").value, byId("login-remember").checked);
      byId("login-ended").hidden = true;
      loginForm.reset();
      reply.textContent = "";
      await ctx.enter();
    } catch (error) {
      if (error.status === 401) {
        reply.textContent = t("auth.wrong_password");
        reply.dataset.status = "error";
      } else if (error.status === 409) {
        await ctx.start(); // no password yet: show the setup form
      } else {
        showError(reply, error);
      }
    } finally {
      button.disabled = false;
    }
  });

  setupForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const reply = setupForm.querySelector(".reply");
    const password = byId("setup-password").value;
    if (password !== byId("setup-password2").value) {
      reply.textContent = t("setup.mismatch");
      reply.dataset.status = "error";
      return;
    }
    const button = setupForm.querySelector("button");
    button.disabled = true;
    try {
      await api.setup(byId("setup-code").value.trim(), password);
      setupForm.reset();
      reply.textContent = "";
      await ctx.enter();
    } catch (error) {
      if (error.status === 403) {
        reply.textContent = t("setup.wrong_code");
        reply.dataset.status = "error";
      } else if (error.status === 409) {
        await ctx.start(); // someone finished the setup meanwhile: log in instead
      } else {
        showError(reply, error);
      }
    } finally {
      button.disabled = false;
    }
  });

  return {
    /**
     * Show the login form, or the setup form on a gateway without a password. ``ended``
     * is why this phone's session ended (expired, password_changed ...): said, not guessed.
     */
    show(setupRequired, ended) {
      const notice = byId("login-ended");
      notice.hidden = !ended;
      if (ended) {
        const key = `auth.ended_${ended}`;
        notice.textContent = t(has(key) ? key : "auth.ended_unknown");
      }
      loginForm.hidden = setupRequired;
      setupForm.hidden = !setupRequired;
      (setupRequired ? byId("setup-code") : byId("login-password")).focus();
    },
  };
}
