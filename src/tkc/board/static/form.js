// The recipe form, generated from the recipe JSON Schema (/api/schema): objects -> fieldsets, enums -> selects,
// booleans -> checkboxes, numbers/strings -> inputs, arrays of objects and name->object maps -> lists of
// fieldsets. It edits a copy of the parsed recipe sparsely: only keys the user sets are written (a cleared input
// removes its key), so defaults stay the compiler's and keys the form does not know (a typo) are kept.

import { el, setOptions } from "./dom.js";

export class RecipeForm {
  // pickers: {family: [ids], template: [ids], profile: [ids]}; dataset paths come from the #dataset-files datalist
  constructor(root, schema, pickers, onChange) {
    this.root = root;
    this.schema = schema;
    this.pickers = pickers;
    this.onChange = onChange;
    this.data = {};
  }

  deref(s) {
    let node = s || {};
    for (let i = 0; node.$ref && i < 20; i++) {
      const name = node.$ref.split("/").pop();
      const { $ref, ...rest } = node;
      node = { ...this.schema.$defs[name], ...rest };
    }
    return node;
  }

  // Non-null alternatives of an anyOf/oneOf (Optional[X] is X).
  variants(s) {
    const alts = s.anyOf || s.oneOf;
    if (!alts) return [s];
    return alts.map((a) => this.deref(a)).filter((a) => a.type !== "null");
  }

  render(data) {
    this.data = data && typeof data === "object" && !Array.isArray(data) ? structuredClone(data) : {};
    this.root.replaceChildren(this.objectFields(this.deref(this.schema), [], this.data));
  }

  changed() {
    this.onChange(this.data);
  }

  setAt(path, value) {
    let node = this.data;
    for (const k of path.slice(0, -1)) {
      if (node[k] === undefined || node[k] === null || typeof node[k] !== "object") node[k] = {};
      node = node[k];
    }
    const last = path[path.length - 1];
    if (value === undefined) delete node[last];
    else node[last] = value;
    this.changed();
  }

  objectFields(s, path, obj) {
    const box = el("div", { class: "fields" });
    for (const [key, sub] of Object.entries(s.properties || {})) {
      box.append(this.field(key, sub, [...path, key], obj ? obj[key] : undefined, (s.required || []).includes(key)));
    }
    const extra = s.additionalProperties && typeof s.additionalProperties === "object" ? s.additionalProperties
      : s.patternProperties ? Object.values(s.patternProperties)[0] : null;
    if (extra) box.append(this.mapField(this.deref(extra), path, obj || {}));
    return box;
  }

  field(key, rawSchema, path, value, required) {
    const s = this.deref(rawSchema);
    const dotted = path.join(".");
    const label = el("label", { class: "name", title: s.description || "" }, key, required ? " *" : "");
    const variants = this.variants(s);
    const v = this.pickVariant(variants, value);
    if (v.type === "object" || v.properties) {
      const fs = el("fieldset", { "data-path": dotted, "data-testid": `fieldset-${dotted}` },
        el("legend", { title: s.description || "" }, key));
      fs.append(this.objectFields(v, path, value && typeof value === "object" ? value : undefined));
      return fs;
    }
    if (v.type === "array" && v.items) {
      const items = this.deref(v.items);
      if (items.type === "object" || items.discriminator || items.oneOf || items.anyOf) {
        return this.arrayOfObjects(key, s, items, path, Array.isArray(value) ? value : []);
      }
    }
    const input = this.scalarInput(key, s, v, path, value);
    const help = s.description ? el("small", { class: "help" }, s.description) : null;
    return el("div", { class: "row", "data-path": dotted }, label, input, help);
  }

  pickVariant(variants, value) {
    if (variants.length === 1) return variants[0];
    const kind = Array.isArray(value) ? "array" : value === null || value === undefined ? null : typeof value;
    const byType = (t) => variants.find((x) => x.type === t || (t === "object" && x.properties));
    return (kind && byType(kind === "number" ? "number" : kind)) || byType("string") || variants[0];
  }

  scalarInput(key, s, v, path, value) {
    const testid = `field-${path.join(".")}`;
    const picker = this.pickerFor(path);
    const dflt = s.default !== undefined && s.default !== null ? s.default : undefined;
    if (picker || v.enum) {
      const sel = el("select", { "data-testid": testid, name: path.join(".") });
      const values = picker || v.enum;
      setOptions(sel, values, value, dflt !== undefined ? `(default: ${dflt})` : "(unset)");
      sel.addEventListener("change", () => this.setAt(path, sel.value === "" ? undefined : sel.value));
      return sel;
    }
    if (v.const !== undefined) {
      return el("input", { type: "text", value: String(v.const), readOnly: true, "data-testid": testid });
    }
    if (v.type === "boolean") {
      const box = el("input", { type: "checkbox", "data-testid": testid, name: path.join(".") });
      box.checked = value === undefined ? Boolean(dflt) : Boolean(value);
      box.addEventListener("change", () => this.setAt(path, box.checked));
      return box;
    }
    if (v.type === "integer" || v.type === "number") return this.numberInput(path, v, value, dflt, testid);
    if (v.type === "array") return this.listInput(path, value, testid);
    const attrs = { type: "text", "data-testid": testid, name: path.join("."), placeholder: dflt ?? "" };
    if (path[path.length - 1] === "path" && path.includes("datasets")) attrs.list = "dataset-files";
    const inp = el("input", attrs);
    inp.value = value === undefined || value === null ? "" : typeof value === "object" ? JSON.stringify(value) : value;
    inp.addEventListener("input", () => this.setAt(path, inp.value === "" ? undefined : inp.value));
    return inp;
  }

  numberInput(path, v, value, dflt, testid) {
    const inp = el("input", { type: "number", step: v.type === "integer" ? "1" : "any", "data-testid": testid,
      name: path.join("."), placeholder: dflt === undefined ? "" : String(dflt) });
    inp.value = typeof value === "number" ? String(value) : value === undefined ? "" : String(value);
    inp.addEventListener("input", () => {
      if (inp.value === "") return this.setAt(path, undefined);
      const n = Number(inp.value);
      if (!Number.isNaN(n)) this.setAt(path, n);
    });
    return inp;
  }

  // An array of strings as one comma-separated input.
  listInput(path, value, testid) {
    const inp = el("input", { type: "text", "data-testid": testid, name: path.join("."), placeholder: "a, b, c" });
    inp.value = Array.isArray(value) ? value.join(", ") : "";
    inp.addEventListener("input", () => {
      const items = inp.value.split(",").map((x) => x.trim()).filter(Boolean);
      this.setAt(path, items.length ? items : undefined);
    });
    return inp;
  }

  pickerFor(path) {
    const p = path.join(".");
    if (p === "model.family") return this.pickers.family;
    if (p === "template") return ["auto", ...this.pickers.template];
    if (p === "hardware") return this.pickers.profile;
    return null;
  }

  // Stages: each item a fieldset whose schema is chosen by its `kind` (the discriminator).
  arrayOfObjects(key, s, items, path, list) {
    const dotted = path.join(".");
    const fs = el("fieldset", { "data-path": dotted, "data-testid": `fieldset-${dotted}` },
      el("legend", { title: s.description || "" }, key));
    const mapping = (items.discriminator && items.discriminator.mapping) || null;
    list.forEach((item, i) => {
      const itemSchema = mapping && item && mapping[item.kind] ? this.deref({ $ref: mapping[item.kind] })
        : this.pickVariant(this.variants(items), item);
      const sub = el("fieldset", { class: "item", "data-path": `${dotted}.${i}` },
        el("legend", {}, `${key}[${i}]${item && item.name ? ` ${item.name}` : ""}`),
        el("button", { type: "button", class: "small", onclick: () => this.removeItem(path, i) }, "remove"));
      sub.append(this.objectFields(itemSchema, [...path, i], item));
      fs.append(sub);
    });
    const kinds = mapping ? Object.keys(mapping) : null;
    const kindSel = kinds ? el("select", {}, kinds.map((k) => el("option", { value: k }, k))) : null;
    fs.append(el("div", { class: "row" }, kindSel,
      el("button", { type: "button", class: "small", onclick: () => this.addItem(path, kindSel) }, `add ${key}`)));
    return fs;
  }

  addItem(path, kindSel) {
    const list = this.getAt(path) || [];
    list.push(kindSel ? { kind: kindSel.value, name: `${kindSel.value}${list.length}` } : {});
    this.setAt(path, list);
    this.render(this.data);
  }

  removeItem(path, i) {
    const list = this.getAt(path) || [];
    list.splice(i, 1);
    this.setAt(path, list.length ? list : undefined);
    this.render(this.data);
  }

  getAt(path) {
    return path.reduce((node, k) => (node && typeof node === "object" ? node[k] : undefined), this.data);
  }

  // A name -> object map (data.datasets): one fieldset per entry, plus "add" with a name.
  mapField(valueSchema, path, obj) {
    const box = el("div", { class: "map" });
    for (const [name, entry] of Object.entries(obj)) {
      if (!entry || typeof entry !== "object" || Array.isArray(entry)) continue;
      const sub = el("fieldset", { class: "item", "data-path": [...path, name].join(".") },
        el("legend", {}, name),
        el("button", { type: "button", class: "small", onclick: () => this.removeEntry(path, name) }, "remove"));
      sub.append(this.objectFields(valueSchema, [...path, name], entry));
      box.append(sub);
    }
    const nameInput = el("input", { type: "text", placeholder: "new name" });
    box.append(el("div", { class: "row" }, nameInput,
      el("button", { type: "button", class: "small", onclick: () => this.addEntry(path, nameInput.value) }, "add")));
    return box;
  }

  addEntry(path, name) {
    name = name.trim();
    if (!name) return;
    const obj = this.getAt(path) || {};
    if (!(name in obj)) obj[name] = {};
    this.setAt(path, obj);
    this.render(this.data);
  }

  removeEntry(path, name) {
    const obj = this.getAt(path) || {};
    delete obj[name];
    this.setAt(path, obj);
    this.render(this.data);
  }
}
