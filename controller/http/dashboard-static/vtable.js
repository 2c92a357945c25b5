// A virtualised table: however many rows it holds, only the ones in view (and a few
// around them) are in the page. Rows have one fixed height (style.css); two spacer rows
// stand for the rest, so the scroll bar is right. Every value is written with textContent.
"use strict";

window.VirtualTable = class VirtualTable {
  // scroller: the element that scrolls; table: its <table>; cells(item) -> array of
  // [text, className, title?]; key(item) -> the row's data-id.
  constructor(scroller, table, cells, key, rowHeight = 28, overscan = 8) {
    this.scroller = scroller;
    this.body = table.tBodies[0];
    this.columns = table.tHead.rows[0].cells.length;
    this.cells = cells;
    this.key = key;
    this.rowHeight = rowHeight;
    this.overscan = overscan;
    this.items = [];
    this.frame = 0;
    scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
  }

  setItems(items) {
    this.items = items;
    this.render();
  }

  schedule() {
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
    }
  }

  spacer(height) {
    const tr = document.createElement("tr");
    tr.className = "spacer";
    const td = document.createElement("td");
    td.colSpan = this.columns;
    tr.appendChild(td);
    tr.style.height = `${height}px`;
    return tr;
  }

  row(item) {
    const tr = document.createElement("tr");
    tr.dataset.id = this.key(item);
    for (const [text, className, title] of this.cells(item)) {
      const td = document.createElement("td");
      td.textContent = text == null ? "" : String(text);
      if (className) td.className = className;
      if (title) td.title = title;
      tr.appendChild(td);
    }
    return tr;
  }

  render() {
    const total = this.items.length;
    const view = Math.max(this.scroller.clientHeight, this.rowHeight * 10);
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / this.rowHeight) - this.overscan);
    const last = Math.min(total, first + Math.ceil(view / this.rowHeight) + 2 * this.overscan);
    const fragment = document.createDocumentFragment();
    if (first > 0) fragment.appendChild(this.spacer(first * this.rowHeight));
    for (let i = first; i < last; i++) fragment.appendChild(this.row(this.items[i]));
    if (last < total) fragment.appendChild(this.spacer((total - last) * this.rowHeight));
    this.body.replaceChildren(fragment);
  }
};
