/*! feedback-tokens widget: no dependencies, no build step.
 *
 *   <div data-feedback-url="https://feedback.example.com/api/v1/feedback/tokens/eyJ.../8d2c3a51-..."
 *        data-comment="true" data-question="Was this answer helpful?"></div>
 *   <script src="https://feedback.example.com/widget.js" async></script>
 *
 * Or from a script: FeedbackWidget.mount(element, url, {comment: true, lang: "fr", question: "…"}).
 * The control (thumbs, 1-5 stars, categories or a text box) follows the token's feedback_config,
 * read from <url>/info, which consumes nothing. Submitting POSTs JSON to the token URL. The host
 * element then fires a bubbling "feedback" event: detail = {outcome, feedback | problem}.
 * The URL is the token's `url` as issued (<jwt>/<token id>); the older <jwt>-only form works too.
 */
(function () {
  "use strict";
  if (window.FeedbackWidget) return;

  var STRINGS = {
    en: {
      question: "Was this helpful?", up: "Helpful", down: "Not helpful",
      stars: "{n} of {m} stars", comment: "Comment (optional)", text: "Your feedback", send: "Send",
      loading: "Loading…", sending: "Sending…",
      thanks: "Thank you! Your feedback has been recorded.",
      updated: "Thank you! Your answer has been updated.",
      duplicate: "Thank you! Your feedback had already been recorded.",
      used: "Feedback has already been given with this link.",
      expired: "This feedback link has expired.",
      revoked: "This feedback link is no longer valid.",
      invalid: "This feedback link is not valid.",
      rejected: "Not accepted: {detail}",
      retry: "Could not send your feedback just now. Please try again."
    },
    fr: {
      question: "Cette réponse vous a-t-elle aidé ?", up: "Utile", down: "Pas utile",
      stars: "{n} étoile(s) sur {m}", comment: "Commentaire (facultatif)", text: "Votre avis",
      send: "Envoyer", loading: "Chargement…", sending: "Envoi…",
      thanks: "Merci ! Votre avis a bien été enregistré.",
      updated: "Merci ! Votre réponse a été mise à jour.",
      duplicate: "Merci ! Votre avis avait déjà été enregistré.",
      used: "Un avis a déjà été donné avec ce lien.",
      expired: "Ce lien pour donner votre avis a expiré.",
      revoked: "Ce lien pour donner votre avis n’est plus valable.",
      invalid: "Ce lien n’est pas valable.",
      rejected: "Refusé : {detail}",
      retry: "Impossible d’envoyer votre avis pour le moment. Réessayez."
    }
  };

  // Material Icons' thumb_up and star (Apache License 2.0).
  var THUMB = "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06" +
    "L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05" +
    "c.09-.23.14-.47.14-.73v-2z";
  var STAR = "M12 17.27 18.18 21l-1.64-7.03L22 9.24l-7.19-.61L12 2 9.19 8.63 2 9.24l5.46 5.73L5.82 21z";

  var CSS = [
    ":host{display:block}",
    ".fbw{font:inherit;color:inherit;display:flex;flex-direction:column;gap:.5rem;max-width:32rem}",
    ".q{margin:0;font-weight:600}",
    ".choices{display:flex;flex-wrap:wrap;gap:.4rem}",
    "button{font:inherit;cursor:pointer;display:inline-flex;align-items:center;gap:.35rem;",
    "padding:.45rem .75rem;border:1px solid var(--fbw-border,#c9ced8);border-radius:999px;",
    "background:var(--fbw-bg,#fff);color:var(--fbw-fg,#1d2330)}",
    "button:hover{border-color:var(--fbw-accent,#2b6cb0)}",
    "button[aria-pressed=true]{background:var(--fbw-accent,#2b6cb0);border-color:var(--fbw-accent,#2b6cb0);",
    "color:#fff}",
    "button:focus-visible,textarea:focus-visible{outline:3px solid var(--fbw-focus,#90cdf4);outline-offset:2px}",
    "button:disabled{opacity:.6;cursor:default}",
    ".stars{gap:.1rem}",
    ".stars button{border-radius:8px;padding:.3rem;border-color:transparent;background:transparent}",
    ".stars button:hover{border-color:transparent}",
    ".stars svg{width:1.6em;height:1.6em;fill:var(--fbw-star-off,#c9ced8)}",
    ".stars button.lit svg{fill:var(--fbw-star,#d69e2e)}",
    ".stars button[aria-pressed=true]{background:transparent;border-color:var(--fbw-accent,#2b6cb0)}",
    "svg{width:1.2em;height:1.2em;fill:currentColor;flex:none}",
    ".down svg{transform:rotate(180deg)}",
    ".more{display:flex;flex-direction:column;gap:.35rem}",
    ".more[hidden]{display:none}",
    "label{font-size:.9em;opacity:.85}",
    "textarea{font:inherit;min-height:4rem;padding:.45rem .55rem;border:1px solid var(--fbw-border,#c9ced8);",
    "border-radius:8px;resize:vertical}",
    ".send{align-self:flex-start;border-radius:8px;background:var(--fbw-accent,#2b6cb0);color:#fff;",
    "border-color:var(--fbw-accent,#2b6cb0);font-weight:600}",
    ".status{margin:0;min-height:1.5em;font-size:.95em}",
    ".status.ok{color:#276749}.status.bad{color:#9c4221}"
  ].join("");

  var counter = 0;

  function pickLang(wanted) {
    var tags = [wanted, document.documentElement.lang].concat(navigator.languages || [navigator.language]);
    for (var i = 0; i < tags.length; i++) {
      var primary = String(tags[i] || "").split("-")[0].toLowerCase();
      if (STRINGS[primary]) return primary;
    }
    return "en";
  }

  function fmt(text, values) {
    return text.replace(/\{(\w+)\}/g, function (_, name) { return String(values[name]); });
  }

  function icon(path) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var p = document.createElementNS(ns, "path");
    p.setAttribute("d", path);
    svg.appendChild(p);
    return svg;
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var name in attrs || {}) {
      if (name === "text") node.textContent = attrs[name];
      else node.setAttribute(name, attrs[name]);
    }
    (children || []).forEach(function (child) { node.appendChild(child); });
    return node;
  }

  function whole(x) { return typeof x === "number" && isFinite(x) && Math.floor(x) === x; }

  // The same choice as the service's HTML picker (app/pages.py `choices`).
  function controlFor(config, s) {
    if (config && config.type === "freeform") return {kind: "text", choices: []};
    if (config && config.type === "categorical") {
      return {kind: "categories", choices: config.categories.map(function (c) {
        return {score: c.value, text: c.label != null ? c.label : String(c.value)};
      })};
    }
    var lo = config ? config.min : null, hi = config ? config.max : null;
    if (whole(lo) && whole(hi)) {
      var first = Math.max(lo, 1);
      if (hi - first + 1 >= 3 && hi - first + 1 <= 10) {
        var stars = [];
        for (var n = first; n <= hi; n++) stars.push({score: n, text: fmt(s.stars, {n: n, m: hi}), star: true});
        return {kind: "stars", choices: stars};
      }
    }
    var up = hi != null ? hi : (lo != null && lo >= 1 ? lo + 1 : 1);
    var down = lo != null ? lo : Math.min(0, up - 1);
    return {kind: "thumbs", choices: [{score: up, text: s.up, thumb: "up"}, {score: down, text: s.down, thumb: "down"}]};
  }

  function mount(host, url, options) {
    if (!host || host.__feedbackWidget) return host && host.__feedbackWidget;
    options = options || {};
    var s = STRINGS[pickLang(options.lang || host.getAttribute("data-lang"))];
    var withComment = options.comment != null ? !!options.comment : host.getAttribute("data-comment") === "true";
    var question = options.question || host.getAttribute("data-question") || s.question;
    // A pasted link may carry an answer, a fragment or a trailing slash: the token URL is the path.
    var base = String(url).trim().split("#")[0].split("?")[0].replace(/\/+$/, "");
    var id = "fbw" + (++counter);

    var root = host;
    if (host.attachShadow) {
      root = host.shadowRoot || host.attachShadow({mode: "open"});
      try {
        var sheet = new CSSStyleSheet();
        sheet.replaceSync(CSS);
        root.adoptedStyleSheets = [sheet];
      } catch (e) {
        root.appendChild(el("style", {text: CSS}));
      }
    } else {
      root.appendChild(el("style", {text: CSS.replace(":host", ".fbw-host")}));
      host.classList.add("fbw-host");
    }

    var status = el("p", {"class": "status", role: "status", "aria-live": "polite", id: id + "-status", text: s.loading});
    var questionNode = el("p", {"class": "q", id: id + "-q", text: question});
    var choicesNode = el("div", {"class": "choices", role: "group", "aria-labelledby": id + "-q"});
    var textarea = el("textarea", {id: id + "-c", maxlength: "4096"});
    var sendButton = el("button", {type: "button", "class": "send", text: s.send});
    var more = el("div", {"class": "more", hidden: ""}, [
      el("label", {"for": id + "-c", text: s.comment}), textarea, sendButton
    ]);
    var box = el("div", {"class": "fbw", "aria-describedby": id + "-status"}, [questionNode, choicesNode, more, status]);
    root.appendChild(box);

    var state = {info: null, control: null, selected: null, busy: false, buttons: []};
    var api = {host: host, url: base, state: state};
    host.__feedbackWidget = api;

    function say(text, tone) {
      status.textContent = text;
      status.className = "status" + (tone ? " " + tone : "");
    }

    function press(choice) {
      state.selected = choice;
      state.buttons.forEach(function (b) {
        var on = choice != null && b.__choice.score === choice.score;
        b.setAttribute("aria-pressed", on ? "true" : "false");
        if (state.control.kind === "stars") b.classList.toggle("lit", choice != null && b.__choice.score <= choice.score);
      });
    }

    function busy(on) {
      state.busy = on;
      box.setAttribute("aria-busy", on ? "true" : "false");
      state.buttons.concat([sendButton]).forEach(function (b) { b.disabled = on; });
    }

    function emit(detail) {
      var event;
      try { event = new CustomEvent("feedback", {bubbles: true, composed: true, detail: detail}); }
      catch (e) { event = document.createEvent("CustomEvent"); event.initCustomEvent("feedback", true, false, detail); }
      host.dispatchEvent(event);
    }

    function problemText(code, detail) {
      if (code === "token_used") return s.used;
      if (code === "token_expired") return s.expired;
      if (code === "token_revoked") return s.revoked;
      if (code === "token_invalid" || code === "token_not_found") return s.invalid;
      if (code === "invalid_feedback" || code === "invalid_body") return fmt(s.rejected, {detail: detail || code});
      return s.retry;
    }

    function submit(body) {
      if (state.busy) return;
      busy(true);
      say(s.sending);
      fetch(base, {
        method: "POST", mode: "cors", credentials: "omit",
        headers: {"Content-Type": "application/json", "Accept": "application/json"},
        body: JSON.stringify(body)
      }).then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (data) {
          busy(false);
          if (response.ok) {
            var outcome = data.duplicate ? "duplicate" : (data.revision > 1 ? "updated" : "thanks");
            say(s[outcome], "ok");
            emit({outcome: outcome, feedback: data});
          } else {
            say(problemText(data.code, data.detail), "bad");
            emit({outcome: data.code || "error", problem: data});
          }
        });
      }, function () {
        busy(false);
        say(s.retry, "bad");
        emit({outcome: "network_error"});
      });
    }

    function answer(choice) {
      var body = {};
      if (state.control.kind === "text") body.value = textarea.value;
      else body.score = choice.score;
      if (state.control.kind !== "text" && withComment && textarea.value.trim()) body.comment = textarea.value;
      return body;
    }

    function choose(choice) {
      press(choice);
      if (withComment) {
        more.hidden = false;
        say("");
        return;  // sent with the Send button, with the comment
      }
      submit(answer(choice));
    }

    function render(info) {
      state.info = info;
      state.control = controlFor(info.feedback_config, s);
      var kind = state.control.kind;
      choicesNode.className = "choices " + kind;
      if (kind === "text") {
        choicesNode.hidden = true;
        more.hidden = false;
        more.firstChild.textContent = s.text;
      }
      state.control.choices.forEach(function (choice) {
        var b = el("button", {type: "button", "aria-pressed": "false", "aria-label": choice.text});
        b.__choice = choice;
        if (choice.thumb) {
          b.className = choice.thumb;
          b.appendChild(icon(THUMB));
          b.appendChild(el("span", {text: choice.text}));
        } else if (choice.star) {
          b.appendChild(icon(STAR));
        } else {
          b.appendChild(el("span", {text: choice.text}));
        }
        b.addEventListener("click", function () { choose(choice); });
        if (kind === "stars") {
          b.addEventListener("mouseenter", function () {
            state.buttons.forEach(function (o) { o.classList.toggle("lit", o.__choice.score <= choice.score); });
          });
          b.addEventListener("mouseleave", function () { press(state.selected); });
        }
        state.buttons.push(b);
        choicesNode.appendChild(b);
      });
      sendButton.addEventListener("click", function () {
        if (kind === "text") {
          if (!textarea.value.trim()) { textarea.focus(); return; }
          submit(answer(null));
        } else if (state.selected) {
          submit(answer(state.selected));
        }
      });
      // Under 'update' the person sees, and may change, the answer they gave before.
      var latest = info.latest;
      if (latest && latest.score != null) {
        state.control.choices.forEach(function (c) { if (c.score === latest.score) press(c); });
      }
      if (latest && kind === "text" && typeof latest.value === "string") textarea.value = latest.value;
      if (latest && kind !== "text" && latest.comment) textarea.value = latest.comment;
      if (info.status === "active") say("");
      else say(problemText({used: "token_used", expired: "token_expired", revoked: "token_revoked"}[info.status]), "bad");
      if (info.status !== "active") busy(true);
    }

    fetch(base + "/info", {mode: "cors", credentials: "omit", headers: {"Accept": "application/json"}})
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (data) {
          if (response.ok) render(data);
          else say(problemText(data.code, data.detail), "bad");
        });
      }, function () { say(s.retry, "bad"); });

    return api;
  }

  function scan(scope) {
    var nodes = (scope || document).querySelectorAll("[data-feedback-url]");
    for (var i = 0; i < nodes.length; i++) mount(nodes[i], nodes[i].getAttribute("data-feedback-url"));
  }

  window.FeedbackWidget = {mount: mount, scan: scan, strings: STRINGS};
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", function () { scan(); });
  else scan();
})();
