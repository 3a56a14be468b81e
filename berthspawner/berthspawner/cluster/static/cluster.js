// The cluster page: asks the service for every node's state every 2 s and draws it; the
// buttons post to the service. Text goes in with textContent only: user names, labels and
// images come from users and nodes.
"use strict";
(function () {
  const prefix = document.body.dataset.prefix;
  const xsrf = document.body.dataset.xsrf;
  const INTERVAL = 2000;

  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  async function post(path, body) {
    const r = await fetch(prefix + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-XSRFToken": xsrf },
      body: JSON.stringify(body || {}),
    });
    let answer = {};
    try { answer = await r.json(); } catch (e) { /* no body */ }
    if (!r.ok) throw new Error(answer.error || `${r.status} ${r.statusText}`);
    return answer;
  }

  function problem(text) {
    const p = document.getElementById("problem");
    p.textContent = text || "";
    p.hidden = !text;
  }

  function table(cls, head, rows) {
    if (!rows.length) return h("p", { class: "muted " + cls }, "none");
    return h("table", { class: cls }, h("thead", {}, h("tr", {}, head.map((t) => h("th", {}, t)))), h("tbody", {}, rows));
  }

  function bars(node) {
    return node.bars.map((b) =>
      h("div", { class: "bar", "data-bar": b.label },
        h("span", {}, b.label),
        h("div", { class: "track" }, b.pct === null ? null : (() => {
          const f = h("div", { class: "fill" + (b.pct >= 90 ? " high" : "") });
          f.style.width = b.pct + "%";
          return f;
        })()),
        h("span", { class: "muted" }, b.text)));
  }

  function drainControls(node) {
    if (node.state !== "up") return h("div", { class: "actions" });
    if (!node.can_drain) {
      return h("div", { class: "actions muted", title: "berthd serves drain only on its Admin socket" }, "drain: berthctl on the node");
    }
    const reason = h("input", { class: "reason", placeholder: "reason (optional)", "aria-label": "drain reason" });
    const act = (action) => async (ev) => {
      ev.target.disabled = true;
      try {
        await post(`api/nodes/${encodeURIComponent(node.name)}/${action}`, { reason: reason.value });
        problem("");
      } catch (e) {
        problem(`${action} ${node.name}: ${e.message}`);
      }
      refresh();
    };
    return node.draining
      ? h("div", { class: "actions" }, h("button", { class: "undrain", onclick: act("undrain") }, "Undrain"))
      : h("div", { class: "actions" }, reason, h("button", { class: "drain", onclick: act("drain") }, "Drain"));
  }

  function moveControl(node, v, nodes) {
    const others = nodes.filter((n) => n.name !== node.name && n.state === "up");
    if (!others.length) return "";
    const select = h("select", { class: "move-to", "aria-label": `move ${v.name} to` },
      others.map((n) => h("option", { value: n.name }, n.name)));
    const go = async (ev) => {
      ev.target.disabled = true;
      try {
        await post("api/moves", { user: v.user, server: v.server, from: node.name, to: select.value });
        problem("");
      } catch (e) {
        problem(`move ${v.user}'s volume: ${e.message}`);
      }
      refresh();
    };
    return h("span", {}, "move to ", select, " ", h("button", { class: "move", onclick: go }, "Move"));
  }

  function drawNode(node, nodes) {
    const badge = node.state === "down" ? `down${node.down_for ? " for " + node.down_for : ""}` : node.state;
    const head = h("div", { class: "node-head" },
      h("h2", {}, node.name),
      h("span", { class: "badge " + node.state }, badge),
      node.draining ? h("span", { class: "badge draining" }, "draining") : null,
      h("span", { class: "muted" }, node.address),
      h("span", { class: "muted" }, node.version),
      drainControls(node));
    const parts = [head];
    if (node.state === "down") {
      parts.push(h("p", { class: "error" }, `Does not answer: ${node.error}`,
        node.last_answer ? ` (last answer ${node.last_answer} ago; what follows is from then)` : ""));
    }
    if (node.drain_reason) parts.push(h("p", { class: "drain-reason" }, "Draining: ", node.drain_reason));
    if (node.fencing) parts.push(h("p", { class: "fencing muted" }, "Fencing: ", node.fencing));
    parts.push(h("div", { class: "bars" }, bars(node)));
    parts.push(h("h3", {}, "Conditions"),
      h("div", { class: "conditions" }, node.conditions.map((c) =>
        h("span", { class: "tag cond" + (c.bad ? " bad" : ""), title: c.message, "data-type": c.type },
          `${c.type}=${c.status}${c.reason ? " (" + c.reason + ")" : ""}`))));
    const labels = Object.entries(node.labels);
    parts.push(h("h3", {}, "Labels"),
      labels.length ? h("div", { class: "labels" }, labels.map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`)))
        : h("p", { class: "muted" }, "none"));
    parts.push(h("h3", {}, "Servers"), table("servers", ["User", "Server", "State", "Image", "Age", "CPU", "Memory"],
      node.servers.map((s) => h("tr", { class: "server", "data-user": s.user, "data-server": s.server, "data-state": s.state },
        h("td", {}, s.user), h("td", {}, s.server), h("td", {}, s.state + (s.reason ? ` (${s.reason})` : "")),
        h("td", {}, s.image), h("td", {}, s.age), h("td", {}, s.cpu), h("td", {}, s.memory)))));
    parts.push(h("h3", {}, "User volumes"), table("volumes", ["Volume", "User", "Server", "Size", "Last used", ""],
      node.volumes.map((v) => h("tr", { class: "volume", "data-volume": v.name, "data-user": v.user },
        h("td", {}, v.name), h("td", {}, v.user), h("td", {}, v.server), h("td", {}, v.size), h("td", {}, v.last_used),
        h("td", {}, node.state === "up" ? moveControl(node, v, nodes) : "")))));
    if (node.warm.length) {
      parts.push(h("h3", {}, "Warm servers"), table("warm", ["Image", "Port", "Ready"],
        node.warm.map((w) => h("tr", { class: "warm", "data-image": w.image },
          h("td", {}, w.image), h("td", {}, String(w.port)), h("td", {}, `${w.ready} of ${w.size}`)))));
    }
    parts.push(h("h3", {}, "Images"), table("images", ["Image", "Size", "Servers running"],
      node.images.map((i) => h("tr", { class: "image" }, h("td", {}, i.reference), h("td", {}, i.size),
        h("td", {}, String(i.servers))))));
    return h("section", { class: "node", id: "node-" + node.name, "data-node": node.name, "data-state": node.state,
      "data-draining": String(node.draining) }, parts);
  }

  function drawMoves(moves) {
    document.getElementById("moves-section").hidden = !moves.length;
    const body = document.querySelector("#moves tbody");
    body.replaceChildren(...moves.map((m) => h("tr", { class: "move-row", "data-state": m.state, "data-user": m.user },
      h("td", {}, m.user), h("td", {}, m.server), h("td", {}, m.from), h("td", {}, m.to), h("td", {}, m.state),
      h("td", {}, m.progress, m.error ? h("div", { class: "error" }, m.error) : null,
        m.lines.length ? h("div", { class: "muted" }, m.lines[m.lines.length - 1]) : null))));
  }

  function busy() {
    // Redrawing would drop what the admin is typing or choosing.
    const a = document.activeElement;
    return a && (a.tagName === "INPUT" || a.tagName === "SELECT") && a.closest("#nodes");
  }

  let inFlight = false;
  async function refresh() {
    if (inFlight) return;
    inFlight = true;
    try {
      // The hub's login cookie counts for a script's request only with the XSRF token.
      const r = await fetch(prefix + "api/state", {
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-XSRFToken": xsrf },
      });
      if (!r.ok) throw new Error(`the service answered ${r.status}`);
      const state = await r.json();
      if (!busy()) {
        document.getElementById("nodes").replaceChildren(...state.nodes.map((n) => drawNode(n, state.nodes)));
      }
      drawMoves(state.moves);
      document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      document.getElementById("updated").textContent = `not updated: ${e.message}`;
    } finally {
      inFlight = false;
    }
  }

  refresh();
  setInterval(refresh, INTERVAL);
})();
