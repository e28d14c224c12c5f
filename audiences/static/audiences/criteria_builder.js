/*
 * The criteria builder of the audience admin. Plain JavaScript, no framework, no build step.
 *
 * It edits the same JSON tree as the criteria textarea (docs/criteria.md): every change in the builder
 * rewrites the textarea, and a valid edit of the textarea redraws the builder. The vocabulary (operators,
 * their kinds of value, units, defaults, identity types, other audiences) comes from the page
 * (audiences/admin_builder.py reads it from criteria/vocabulary.py). Names are offered from the data
 * (GET names_url), and the audience size is estimated as the criteria change (POST estimate_url, debounced).
 */
(function () {
  "use strict";

  var ESTIMATE_DELAY_MS = 400;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), attrs[key]);
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      if (child) node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function select(options, value, onchange, className) {
    var node = el("select", { className: className || "", onchange: function () { onchange(node.value); } });
    options.forEach(function (option) {
      var item = el("option", { value: option.value, text: option.label });
      if (String(option.value) === String(value)) item.selected = true;
      node.appendChild(item);
    });
    return node;
  }

  function input(type, value, oninput, attrs) {
    var node = el("input", Object.assign({ type: type }, attrs || {}));
    node.value = value === undefined || value === null ? "" : value;
    node.addEventListener("input", function () { oninput(node.value); });
    return node;
  }

  function number(text) {
    if (text === "" || text === null || text === undefined) return null;
    var value = Number(text);
    return isFinite(value) ? value : text;
  }

  function formatCount(n) {
    return Number(n).toLocaleString("en-US");
  }

  function copy(value) {
    return JSON.parse(JSON.stringify(value));
  }

  function getCookie(name) {
    var match = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return match ? decodeURIComponent(match[1]) : "";
  }

  // --- the tree: groups hold children; conditions are the JSON nodes themselves -----------------

  function fromJSON(node) {
    if (node && Array.isArray(node.and)) return { group: "and", children: node.and.map(fromJSON) };
    if (node && Array.isArray(node.or)) return { group: "or", children: node.or.map(fromJSON) };
    if (node && node.exclude !== undefined) {
      var inner = node.exclude;
      var children = inner && Array.isArray(inner.or) ? inner.or.map(fromJSON) : [fromJSON(inner)];
      return { group: "exclude", children: children };
    }
    return { leaf: copy(node) };
  }

  function toJSON(item) {
    if (item.leaf !== undefined) return item.leaf;
    var children = item.children.map(toJSON);
    if (item.group === "exclude") return { exclude: children.length === 1 ? children[0] : { or: children } };
    var result = {};
    result[item.group] = children;
    return result;
  }

  function Builder(textarea, config) {
    this.textarea = textarea;
    this.config = config;
    this.container = document.querySelector('.criteria-builder[data-for="' + textarea.id + '"]');
    this.treeNode = this.container.querySelector(".criteria-builder-tree");
    this.estimateNode = this.container.querySelector(".criteria-estimate");
    this.jsonStatus = textarea.closest("details").querySelector(".criteria-json-status");
    this.names = { attributes: [], events: [] };
    this.eventAttributes = {};
    this.estimateSeq = 0;
    this.timer = null;
    this.root = this.parse(textarea.value) || { group: "and", children: [] };
    if (this.root.leaf !== undefined) this.root = { group: "and", children: [this.root] };
    textarea.closest("details").open = false;
    var self = this;
    textarea.addEventListener("input", function () { self.onJSONInput(); });
    this.render();
    this.loadNames(null);
    this.scheduleEstimate(0);
  }

  Builder.prototype.parse = function (text) {
    try {
      var value = JSON.parse(text);
      if (value && typeof value === "object" && !Array.isArray(value)) return fromJSON(value);
    } catch (error) {
      return null;
    }
    return null;
  };

  Builder.prototype.onJSONInput = function () {
    var parsed = this.parse(this.textarea.value);
    if (!parsed) {
      this.jsonStatus.textContent = "This is not valid JSON yet: the builder shows the last valid criteria.";
      return;
    }
    this.jsonStatus.textContent = "";
    this.root = parsed.leaf !== undefined ? { group: "and", children: [parsed] } : parsed;
    this.render();
    this.scheduleEstimate();
  };

  // Structural change: redraw. Value change: only write the JSON (redrawing would lose the focus).
  Builder.prototype.changed = function (redraw) {
    this.textarea.value = JSON.stringify(toJSON(this.root), null, 2);
    this.jsonStatus.textContent = "";
    if (redraw) this.render();
    this.scheduleEstimate();
  };

  Builder.prototype.render = function () {
    this.treeNode.textContent = "";
    this.treeNode.appendChild(this.renderGroup(this.root, null));
  };

  // --- names seen in the data -------------------------------------------------------------------

  Builder.prototype.loadNames = function (eventName) {
    var self = this;
    var key = eventName ? eventName.toLowerCase() : null;
    if (key && this.eventAttributes[key]) return;
    if (key) this.eventAttributes[key] = [];
    var url = this.config.names_url + (eventName ? "?event=" + encodeURIComponent(eventName) : "");
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (data) {
        if (!data) return;
        if (key) self.eventAttributes[key] = data.event_attributes;
        else self.names = data;
        self.render();
      })
      .catch(function () { /* the pickers keep "Other name…" */ });
  };

  // A select of the names seen (with their counts) and "Other name…", which shows a text field.
  Builder.prototype.namePicker = function (current, names, unit, onchange, placeholder) {
    var known = names.some(function (item) { return item.name.toLowerCase() === String(current || "").toLowerCase(); });
    var wrapper = el("span", { className: "cb-name" });
    var options = [{ value: "", label: placeholder }];
    names.forEach(function (item) {
      options.push({ value: item.name, label: item.name + " (" + formatCount(item.count) + " " + unit + ")" });
    });
    options.push({ value: "__other__", label: "Other name…" });
    var other = !known && current;
    var text = input("text", other ? current : "", function (value) { onchange(value, false); },
      { className: "cb-text", placeholder: "name" });
    text.style.display = other ? "" : "none";
    var picked = known ? names.filter(function (item) {
      return item.name.toLowerCase() === String(current).toLowerCase();
    })[0].name : (other ? "__other__" : "");
    var menu = select(options, picked, function (value) {
      if (value === "__other__") {
        text.style.display = "";
        text.focus();
        return;
      }
      text.style.display = "none";
      onchange(value, true);
    }, "cb-name-select");
    wrapper.appendChild(menu);
    wrapper.appendChild(text);
    return wrapper;
  };

  // --- groups ---------------------------------------------------------------------------------------

  var GROUP_MODES = [
    { value: "and", label: "All of these" },
    { value: "or", label: "Any of these" },
    { value: "exclude", label: "None of these" },
  ];

  Builder.prototype.renderGroup = function (group, parent) {
    var self = this;
    var node = el("div", { className: "cb-group cb-mode-" + group.group });
    var head = el("div", { className: "cb-group-head" }, [
      select(GROUP_MODES, group.group, function (value) { group.group = value; self.changed(true); }, "cb-mode"),
    ]);
    var additions = [
      ["+ Attribute", "cb-add-attribute", function () { return { attribute: "", operator: "equals", value: "" }; }],
      ["+ Event", "cb-add-event", function () {
        return { event: "", frequency: copy(self.config.default_frequency), recency: copy(self.config.default_recency) };
      }],
      ["+ Identity", "cb-add-identity", function () { return { identity: "email", operator: "exists" }; }],
      ["+ Audience", "cb-add-audience", function () {
        var first = self.config.audiences[0];
        return { audience: first ? first.id : 0, operator: "member" };
      }],
    ];
    additions.forEach(function (addition) {
      head.appendChild(el("button", {
        type: "button", className: "button cb-add " + addition[1], text: addition[0],
        onclick: function () { group.children.push({ leaf: addition[2]() }); self.changed(true); },
      }));
    });
    head.appendChild(el("button", {
      type: "button", className: "button cb-add cb-add-group", text: "+ Group",
      onclick: function () { group.children.push({ group: "or", children: [] }); self.changed(true); },
    }));
    if (parent) head.appendChild(this.removeButton(parent.children, group));
    node.appendChild(head);
    var children = el("div", { className: "cb-children" });
    if (!group.children.length) {
      var empty = {
        and: "No condition yet: this group matches every profile.",
        or: "No condition yet: this group matches nobody.",
        exclude: "No condition yet: this group excludes nobody.",
      }[group.group];
      children.appendChild(el("p", { className: "cb-empty", text: empty }));
    }
    group.children.forEach(function (child) {
      children.appendChild(child.leaf !== undefined ? self.renderLeaf(child, group) : self.renderGroup(child, group));
    });
    node.appendChild(children);
    return node;
  };

  Builder.prototype.removeButton = function (list, item) {
    var self = this;
    return el("button", {
      type: "button", className: "button cb-remove", title: "Remove", text: "Remove",
      onclick: function () { list.splice(list.indexOf(item), 1); self.changed(true); },
    });
  };

  // --- conditions ----------------------------------------------------------------------------------

  Builder.prototype.renderLeaf = function (item, group) {
    var node = item.leaf;
    var row;
    if (node.event !== undefined) row = this.renderEvent(item);
    else if (node.identity !== undefined) row = this.renderIdentity(node);
    else if (node.audience !== undefined) row = this.renderAudience(node);
    else if (node.split !== undefined) {
      // A/B split (audiences/splits.py makes them): shown, edited as JSON.
      row = el("div", { className: "cb-row cb-split" }, [el("span", { className: "cb-kind", text: "A/B split" }),
        el("span", { text: "buckets " + node.buckets[0] + "% to " + node.buckets[1] + "% (seed " + node.split + ")" })]);
    }
    else if (node.attribute !== undefined) {
      row = this.renderAttribute(node, this.names.attributes, "profiles", "User attribute");
    } else {
      row = el("div", { className: "cb-row" }, [el("code", { text: JSON.stringify(node) })]);
    }
    row.appendChild(this.removeButton(group.children, item));
    return row;
  };

  Builder.prototype.operator = function (value) {
    return this.config.operators.filter(function (op) { return op.value === value; })[0];
  };

  // An attribute condition: of the profile (names: profiles' attributes) or of an event (its attributes).
  Builder.prototype.renderAttribute = function (node, names, unit, label) {
    var self = this;
    var row = el("div", { className: "cb-row cb-attribute" }, [el("span", { className: "cb-kind", text: label })]);
    row.appendChild(this.namePicker(node.attribute, names, unit, function (value, redraw) {
      node.attribute = value;
      self.changed(false);
    }, "choose an attribute…"));
    row.appendChild(select(this.config.operators, node.operator, function (value) {
      var before = self.operator(node.operator);
      var after = self.operator(value);
      node.operator = value;
      if (!before || before.kind !== after.kind) {
        var defaults = {
          none: undefined, scalar: "", text: "", number: 0, number_range: [0, 0], day: "", date: "",
          date_range: ["", ""], window: { amount: 30, unit: "days" },
        };
        if (after.kind === "none") delete node.value;
        else node.value = copy(defaults[after.kind] === undefined ? "" : defaults[after.kind]);
      }
      self.changed(true);
    }, "cb-operator"));
    this.valueInputs(node, row);
    return row;
  };

  Builder.prototype.valueInputs = function (node, row) {
    var self = this;
    var op = this.operator(node.operator);
    if (!op) return;
    var set = function (value) { node.value = value; self.changed(false); };
    if (op.kind === "scalar") {
      var type = typeof node.value === "boolean" ? "boolean" : typeof node.value === "number" ? "number" : "text";
      row.appendChild(select([
        { value: "text", label: "text" }, { value: "number", label: "number" }, { value: "boolean", label: "yes / no" },
      ], type, function (value) {
        node.value = value === "boolean" ? true : value === "number" ? (number(node.value) || 0) : String(node.value);
        self.changed(true);
      }, "cb-value-type"));
      if (type === "boolean") {
        row.appendChild(select([{ value: "true", label: "yes" }, { value: "false", label: "no" }], String(node.value),
          function (value) { set(value === "true"); }, "cb-value"));
      } else if (type === "number") {
        row.appendChild(input("number", node.value, function (value) { set(number(value)); }, { className: "cb-value", step: "any" }));
      } else {
        row.appendChild(input("text", node.value, set, { className: "cb-text cb-value", placeholder: "value" }));
      }
    } else if (op.kind === "text") {
      row.appendChild(input("text", node.value, set, {
        className: "cb-text cb-value", placeholder: op.value.indexOf("matches") >= 0 ? "pattern: * any, ? one" : "text",
      }));
    } else if (op.kind === "number") {
      row.appendChild(input("number", node.value, function (value) { set(number(value)); }, { className: "cb-value", step: "any" }));
    } else if (op.kind === "number_range" || op.kind === "date_range") {
      var pair = Array.isArray(node.value) ? node.value : [null, null];
      var kind = op.kind === "number_range" ? "number" : "date";
      var parse = op.kind === "number_range" ? number : function (value) { return value; };
      [0, 1].forEach(function (index) {
        if (index === 1) row.appendChild(document.createTextNode("and"));
        row.appendChild(input(kind, pair[index], function (value) {
          pair[index] = parse(value);
          set(pair);
        }, { className: "cb-value", step: "any" }));
      });
    } else if (op.kind === "day" || op.kind === "date") {
      row.appendChild(input("date", node.value, set, { className: "cb-value" }));
    } else if (op.kind === "window") {
      row.appendChild(this.windowInputs(node.value, set));
    }
  };

  Builder.prototype.windowInputs = function (spec, onchange) {
    var self = this;
    spec = spec && typeof spec === "object" ? spec : { amount: 30, unit: "days" };
    return el("span", {}, [
      input("number", spec.amount, function (value) { spec.amount = number(value); onchange(spec); },
        { className: "cb-amount", min: "1" }),
      select(self.config.units, spec.unit, function (value) { spec.unit = value; onchange(spec); }, "cb-unit"),
    ]);
  };

  Builder.prototype.renderIdentity = function (node) {
    var self = this;
    var row = el("div", { className: "cb-row cb-identity" }, [el("span", { className: "cb-kind", text: "Identity" })]);
    row.appendChild(select(this.config.identity_types, node.identity, function (value) {
      node.identity = value;
      self.changed(false);
    }, "cb-identity-type"));
    row.appendChild(select(this.config.identity_operators, node.operator, function (value) {
      node.operator = value;
      if (value === "exists" || value === "not_exists") delete node.value;
      else if (typeof node.value !== "string") node.value = "*";
      self.changed(true);
    }, "cb-operator"));
    if (node.operator !== "exists" && node.operator !== "not_exists") {
      row.appendChild(input("text", node.value, function (value) { node.value = value; self.changed(false); },
        { className: "cb-text cb-value", placeholder: "pattern: * any, ? one" }));
    }
    return row;
  };

  Builder.prototype.renderAudience = function (node) {
    var self = this;
    var row = el("div", { className: "cb-row cb-audience" }, [el("span", { className: "cb-kind", text: "Audience" })]);
    row.appendChild(select(this.config.audience_operators, node.operator, function (value) {
      node.operator = value;
      self.changed(false);
    }, "cb-operator"));
    var audiences = this.config.audiences.map(function (a) { return { value: a.id, label: a.name }; });
    if (!audiences.length) audiences = [{ value: 0, label: "(no other audience yet)" }];
    row.appendChild(select(audiences, node.audience, function (value) {
      node.audience = parseInt(value, 10);
      self.changed(false);
    }, "cb-audience-select"));
    return row;
  };

  Builder.prototype.renderEvent = function (item) {
    var self = this;
    var node = item.leaf;
    var box = el("div", { className: "cb-row cb-event" });
    var first = el("div", { className: "cb-line" }, [el("span", { className: "cb-kind", text: "Event" })]);
    first.appendChild(this.namePicker(node.event, this.names.events, "events", function (value, redraw) {
      node.event = value;
      if (value && redraw) self.loadNames(value);
      self.changed(redraw);
    }, "choose an event…"));
    var frequency = node.frequency || copy(this.config.default_frequency);
    first.appendChild(document.createTextNode("happened"));
    first.appendChild(select(this.config.frequency_operators, frequency.operator, function (value) {
      frequency.operator = value;
      if (value === "fewer_than" && frequency.count < 1) frequency.count = 1;
      node.frequency = frequency;
      self.changed(true);
    }, "cb-frequency"));
    first.appendChild(input("number", frequency.count, function (value) {
      frequency.count = number(value);
      node.frequency = frequency;
      self.changed(false);
    }, { className: "cb-count-input", min: "0" }));
    first.appendChild(document.createTextNode("times"));
    var recency = node.recency || copy(this.config.default_recency);
    var mode = recency.between ? "between" : "within_last";
    first.appendChild(select([
      { value: "within_last", label: "in the last" }, { value: "between", label: "between" },
    ], mode, function (value) {
      node.recency = value === "between" ? { between: ["", ""] } : copy(self.config.default_recency);
      self.changed(true);
    }, "cb-recency"));
    if (mode === "between") {
      [0, 1].forEach(function (index) {
        if (index === 1) first.appendChild(document.createTextNode("and"));
        first.appendChild(input("date", recency.between[index], function (value) {
          recency.between[index] = value;
          node.recency = recency;
          self.changed(false);
        }, { className: "cb-value" }));
      });
    } else {
      first.appendChild(this.windowInputs(recency.within_last, function (spec) {
        node.recency = { within_last: spec };
        self.changed(false);
      }));
    }
    box.appendChild(first);
    // The event's attribute filters.
    var filters = el("div", { className: "cb-filters" });
    var conditions = node.attributes || [];
    var names = this.eventAttributes[String(node.event || "").toLowerCase()] || [];
    if (node.event && !this.eventAttributes[String(node.event).toLowerCase()]) this.loadNames(node.event);
    conditions.forEach(function (condition) {
      var row = self.renderAttribute(condition, names, "events", "where");
      row.appendChild(el("button", {
        type: "button", className: "button cb-remove", text: "Remove",
        onclick: function () {
          conditions.splice(conditions.indexOf(condition), 1);
          if (!conditions.length) delete node.attributes;
          self.changed(true);
        },
      }));
      filters.appendChild(row);
    });
    filters.appendChild(el("button", {
      type: "button", className: "button cb-add cb-add-filter", text: "+ Filter on an event attribute",
      onclick: function () {
        node.attributes = conditions;
        conditions.push({ attribute: "", operator: "equals", value: "" });
        self.changed(true);
      },
    }));
    box.appendChild(filters);
    return box;
  };

  // --- the estimate ----------------------------------------------------------------------------------

  Builder.prototype.scheduleEstimate = function (delay) {
    var self = this;
    clearTimeout(this.timer);
    this.estimateNode.classList.add("cb-pending");
    this.timer = setTimeout(function () { self.estimate(); }, delay === undefined ? ESTIMATE_DELAY_MS : delay);
  };

  Builder.prototype.estimate = function () {
    var self = this;
    var seq = ++this.estimateSeq;
    var criteria;
    try {
      criteria = JSON.parse(this.textarea.value);
    } catch (error) {
      this.showEstimate({ errors: { criteria: ["The JSON is not valid."] } });
      return;
    }
    var token = (document.querySelector("input[name=csrfmiddlewaretoken]") || {}).value || getCookie("csrftoken");
    fetch(this.config.estimate_url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": token },
      body: JSON.stringify({ criteria: criteria, audience_id: this.config.audience_id }),
    })
      .then(function (response) { return response.json(); })
      .then(function (data) { if (seq === self.estimateSeq) self.showEstimate(data); })
      .catch(function () {
        if (seq === self.estimateSeq) self.showEstimate({ errors: { estimate: ["The estimate could not be reached."] } });
      });
  };

  Builder.prototype.showEstimate = function (data) {
    var node = this.estimateNode;
    node.classList.remove("cb-pending");
    node.textContent = "";
    if (data.errors) {
      node.appendChild(el("span", { className: "cb-error", text: "Not complete yet: " }));
      var messages = [];
      Object.keys(data.errors).forEach(function (key) { messages = messages.concat(data.errors[key]); });
      node.appendChild(el("span", { className: "cb-error", text: messages.join(" ") }));
      node.dataset.state = "invalid";
      return;
    }
    if (data.available) {
      node.appendChild(el("span", { className: "cb-count", text: "About " + formatCount(data.count) + " profiles" }));
      node.appendChild(document.createTextNode(
        " match now, of " + formatCount(data.total_profiles) + " (estimated in " + formatCount(data.milliseconds) + " ms)."));
      node.dataset.count = data.count;
    } else {
      node.appendChild(el("span", { text: data.reason }));
    }
    node.dataset.state = "ready";
    this.showConfirmation(data.matches_everybody);
    if (data.matches_everybody) {
      node.appendChild(el("p", { className: "cb-warning",
        text: "No condition yet: add one, or confirm below that this audience is meant to hold every profile." }));
    }
    if (data.warnings && data.warnings.length) {
      node.appendChild(el("ul", {}, data.warnings.map(function (text) {
        return el("li", { className: "cb-warning", text: text });
      })));
    }
  };

  // The "Criteria without a condition" box matters only for such criteria (or once ticked).
  Builder.prototype.showConfirmation = function (needed) {
    var box = document.getElementById("id_confirm_everybody");
    var row = box && box.closest(".form-row");
    if (row) row.style.display = needed || box.checked ? "" : "none";
  };

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("textarea.criteria-json").forEach(function (textarea) {
      var config = document.getElementById(textarea.id + "-builder-config");
      if (config) new Builder(textarea, JSON.parse(config.textContent));
    });
  });
})();
