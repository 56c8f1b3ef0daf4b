// Building the page from data. Every string from a job, task or trajectory goes in as a text node
// (never as HTML): `h()` has no way to set innerHTML.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  return add(el, ...children);
}

export function add(el, ...children) {
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// A link inside the app: the route is built from encoded parts, so no data can make it a javascript: URL.
export function route(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
}

export function link(text, href, props = {}) {
  return h("a", { href, ...props }, text);
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", null, title), ...children);
}

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [h("dt", null, k), h("dd", null, v ?? "–")]));
}

export function pre(text, props = {}) {
  return h("pre", { class: "text", ...props }, text ?? "");
}

export const fmt = {
  num(v, digits = 3) {
    return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–";
  },
  int(v) {
    return typeof v === "number" && Number.isFinite(v) ? Math.round(v).toLocaleString("en-US") : "–";
  },
  pct(v) {
    return typeof v === "number" && Number.isFinite(v) ? `${(100 * v).toFixed(1)}%` : "–";
  },
  secs(v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "–";
    return v < 1 ? `${Math.round(v * 1000)} ms` : v < 120 ? `${v.toFixed(1)} s` : `${(v / 60).toFixed(1)} min`;
  },
  usd(v) {
    return typeof v === "number" && Number.isFinite(v) ? `$${v.toFixed(4)}` : "–";
  },
  date(v) {
    if (!v) return "–";
    const d = typeof v === "number" ? new Date(v * 1000) : new Date(v);
    return Number.isNaN(d.getTime()) ? String(v) : d.toISOString().replace("T", " ").slice(0, 19);
  },
  // "0.500 [0.200, 0.800]": a metric with its 95% interval
  ci(m) {
    if (!m || typeof m.value !== "number") return "–";
    const band = typeof m.ci_low === "number" ? ` [${m.ci_low.toFixed(3)}, ${m.ci_high.toFixed(3)}]` : "";
    return `${m.value.toFixed(3)}${band}`;
  },
};

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${String(kind).replace(/[^a-z0-9_-]/gi, "")}` }, text);
}

export function message(text, kind = "muted") {
  return h("p", { class: kind }, text);
}

// A sortable, filterable, paginated table. `state` (sort, filter, page) outlives a re-render, so a live
// update does not lose what the reader was looking at.
export function dataTable({ columns, rows, state = {}, pageSize = 100, filters = [], name = "table" }) {
  state.sort ??= null;
  state.desc ??= false;
  state.filter ??= "";
  state.page ??= 0;
  const wrap = h("div", { class: "table-wrap", "data-table": name });
  const body = h("tbody");
  const head = h("tr");
  const info = h("span", { class: "muted table-info" });
  const pager = h("span", { class: "pager" });
  const input = h("input", { type: "search", placeholder: "filter…", value: state.filter, "aria-label": `filter ${name}` });

  const text = (col, row) => {
    const v = col.value ? col.value(row) : row[col.key];
    return v === null || v === undefined ? "" : String(v);
  };
  function visible() {
    const needle = state.filter.toLowerCase();
    let out = rows.filter((row) => filters.every((f) => f.test(row)) && (!needle || columns.some((c) => text(c, row).toLowerCase().includes(needle))));
    if (state.sort !== null) {
      const col = columns[state.sort];
      const key = (row) => (col.value ? col.value(row) : row[col.key]);
      out = [...out].sort((a, b) => {
        const x = key(a), y = key(b);
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return state.desc ? -c : c;
      });
    }
    return out;
  }
  function draw() {
    const all = visible();
    const pages = Math.max(1, Math.ceil(all.length / pageSize));
    state.page = Math.min(state.page, pages - 1);
    const slice = all.slice(state.page * pageSize, (state.page + 1) * pageSize);
    body.replaceChildren(...slice.map((row) => h("tr", null, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.render ? c.render(row) : text(c, row))))));
    if (!slice.length) body.append(h("tr", null, h("td", { colspan: columns.length, class: "muted" }, "nothing to show")));
    info.replaceChildren(`${all.length} of ${rows.length} rows`);
    pager.replaceChildren(
      ...(pages > 1
        ? [
            h("button", { type: "button", disabled: state.page === 0, onclick: () => { state.page--; draw(); } }, "‹ prev"),
            ` page ${state.page + 1} of ${pages} `,
            h("button", { type: "button", disabled: state.page >= pages - 1, onclick: () => { state.page++; draw(); } }, "next ›"),
          ]
        : []),
    );
    head.querySelectorAll("th").forEach((th, i) => th.setAttribute("aria-sort", state.sort === i ? (state.desc ? "descending" : "ascending") : "none"));
  }
  columns.forEach((col, i) => {
    head.append(h("th", { class: col.num ? "num" : null, onclick: () => {
      state.desc = state.sort === i ? !state.desc : false;
      state.sort = i;
      draw();
    } }, col.label));
  });
  input.addEventListener("input", () => { state.filter = input.value; state.page = 0; draw(); });
  for (const f of filters) f.onchange = () => { state.page = 0; draw(); };
  const tools = rows.length > 10 || filters.length;
  wrap.append(tools ? h("div", { class: "table-tools" }, input, ...filters.map((f) => f.control), info, pager) : "",
              h("table", { class: "data" }, h("thead", null, head), body));
  draw();
  return wrap;
}

// A <select> filter for dataTable.
export function selectFilter(label, options, test) {
  const select = h("select", { "aria-label": label }, options.map(([value, text]) => h("option", { value }, text)));
  const filter = { control: h("label", { class: "filter" }, `${label} `, select), test: (row) => test(select.value, row), onchange: null };
  select.addEventListener("change", () => filter.onchange && filter.onchange());
  return filter;
}

// Replace what `el` shows (skipping null/false children, unlike replaceChildren).
export function mount(el, ...children) {
  el.replaceChildren();
  return add(el, ...children);
}
