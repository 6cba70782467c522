// app.js: the monitor's only script (served from this server: the Content-Security-Policy
// allows no inline script). Every value from the trail is attacker-controlled: it is only ever
// put into the page with textContent or setAttribute on non-executable attributes, never
// through a property or call that parses HTML.
'use strict';
(function () {
  const body = document.body;
  const db = body.dataset.db || '0';
  const refreshMs = Math.max(100, Number(body.dataset.refreshMs) || 2000);
  const page = body.dataset.page;

  const pick = document.getElementById('dbpick');
  if (pick) {
    pick.addEventListener('change', function () {
      location.href = location.pathname + '?db=' + encodeURIComponent(pick.value);
    });
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function show(v) {
    if (v === null || v === undefined) return '';
    if (typeof v === 'string') return v;
    return JSON.stringify(v);
  }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: 'same-origin' });
    const j = await r.json();
    if (!r.ok) throw new Error(j && j.error ? j.error : 'HTTP ' + r.status);
    return j;
  }

  if (page === '/activity') activity();
  if (page === '/health') health();

  // ---- Activity: keyset pages on id, virtual scrolling, live polling, detail panel ----
  function activity() {
    const params = new URLSearchParams(location.search);
    ['before', 'after', 'limit', 'token'].forEach(function (k) { params.delete(k); });
    params.set('db', db);
    const viewport = document.getElementById('viewport');
    const spacer = document.getElementById('spacer');
    const status = document.getElementById('status');
    const pauseBtn = document.getElementById('pause');
    const compactBox = document.getElementById('compact');
    const detail = document.getElementById('detail');
    const detailBody = document.getElementById('detail-body');
    const pool = []; // the row elements on screen, reused
    const cols = ['id', 'ts', 'kind', 'status', 'db_user', 'actor', 'command', 'table', 'query'];
    // The list is every row of the filter, newest first; position 0 is the newest row known. The
    // page keeps only a window of it, at most MAX_ROWS rows: rows[i] is the row at position
    // top + i. Scrolling down pages in the rows below the window (before = its last id) and drops
    // rows above it; scrolling up pages in the rows just above it (after = its first id: the
    // server answers those oldest first) and drops rows below it; a jump far from the window
    // (the scrollbar dragged) starts it again at a mark. The spacer is `known` rows high, every
    // row at its position whatever the window holds. marks are keyset cursors into the list, one
    // at least every PAGE rows known: markBefore[k] pages in the rows from position markPos[k]
    // (16 bytes a PAGE rows: a million rows are 32 kB of marks, the page's memory stays flat).
    // While the reader watches the top, the live poll puts new rows at position 0 (the window,
    // the marks and `known` move down by as many); further down, new rows are only counted
    // ("N new rows"), not kept.
    const PAGE = 500;
    const MAX_ROWS = 5000;
    const POLL_ROWS = 1000;
    let rows = []; // the window, newest first
    let top = 0; // the position of rows[0]
    let known = 0; // the rows known: positions 0 to known - 1
    let done = false; // known is all of them (the oldest row has been paged in)
    let newest = null; // the id at position 0 (the live poll asks for the rows after it)
    const markPos = [];
    const markBefore = [];
    let gen = 0; // a reset's count: an answer to a request made before it is dropped
    let compact = params.get('compact') === '1';
    let paused = false;
    let loading = false;
    let polling = false;
    let stalled = false; // a page failed: the next poll tries again, not every scroll event
    let error = '';
    let selected = null;
    let waiting = 0; // new rows counted while the reader was not at the top

    compactBox.checked = compact;
    body.classList.toggle('compact', compact);

    function rowHeight() { return compact ? 20 : 30; }

    function setStatus() {
      const news = waiting ? ' · ' + (waiting >= POLL_ROWS ? POLL_ROWS + '+' : waiting) +
        (waiting === 1 ? ' new row' : ' new rows') + ' (scroll to the top)' : '';
      status.textContent = known + ' rows' + (done ? ' (all)' : '') +
        (paused ? ' · paused' : ' · live every ' + refreshMs + ' ms') + news + (error ? ' · ' + error : '');
    }

    function cellValues(r) {
      const table = r.table_name ? (r.schema_name ? r.schema_name + '.' : '') + r.table_name : '';
      return [r.id, r.ts, r.kind, r.status, r.db_user, r.actor, r.command, table, r.query];
    }

    function render() {
      const h = rowHeight();
      spacer.style.height = (known * h) + 'px';
      const first = Math.max(0, Math.floor(viewport.scrollTop / h) - 5);
      const count = Math.ceil(viewport.clientHeight / h) + 10;
      while (pool.length < count) {
        const div = el('div', 'row');
        div.setAttribute('role', 'row');
        cols.forEach(function () { div.appendChild(el('span')); });
        div.addEventListener('click', function () {
          if (div.dataset.id) openDetail(div.dataset.id);
        });
        viewport.appendChild(div);
        pool.push(div);
      }
      for (let k = 0; k < pool.length; k++) {
        const div = pool[k];
        const i = first + k;
        if (k >= count || i < top || i >= top + rows.length) {
          div.hidden = true;
          delete div.dataset.id;
          continue;
        }
        const r = rows[i - top];
        div.hidden = false;
        div.style.top = (i * h) + 'px';
        div.style.height = h + 'px';
        div.dataset.id = String(r.id);
        div.className = 'row status-' + (r.status === 'error' || r.status === 'gap' ? r.status : 'ok') +
          (String(r.id) === selected ? ' selected' : '');
        const v = cellValues(r);
        for (let c = 0; c < v.length; c++) div.children[c].textContent = show(v[c]);
      }
      // What the page holds, for tests: the window's first position and its rows.
      viewport.dataset.window = top + '+' + rows.length;
      ensure(first, first + count - 1);
      setStatus();
    }

    // ensure starts the one request that brings the window to positions first..last, if any.
    function ensure(first, last) {
      if (loading || polling || stalled) return;
      const end = top + rows.length;
      if (!rows.length) {
        if (known) jump(first); else if (!done) down();
      } else if (last < top - 2 * PAGE || first > end + 2 * PAGE) {
        jump(first);
      } else if (last + 100 > end && (end < known || !done)) {
        down();
      } else if (first - 100 < top && top > 0) {
        up();
      }
    }

    function reset() {
      gen++;
      rows = [];
      top = 0;
      known = 0;
      done = false;
      newest = null;
      markPos.length = 0;
      markBefore.length = 0;
    }

    // fetchRows asks for a page; `apply` takes its rows unless a reset came in between.
    async function fetchRows(set, apply) {
      loading = true;
      const g = gen;
      try {
        const p = new URLSearchParams(params);
        Object.keys(set).forEach(function (k) { p.set(k, String(set[k])); });
        const j = await getJSON('/api/activity?' + p.toString());
        if (g === gen) apply(j.rows, j.next_before === null);
        error = '';
      } catch (e) {
        error = e.message;
        stalled = true; // a bad filter is not asked again in a loop; the poll tries again
      } finally {
        loading = false;
      }
      render();
    }

    // learn: the rows `got` are at positions at, at + 1, …; prev is the id at position at - 1.
    // Positions past `known` are new: known grows, with a mark at each multiple of PAGE.
    function learn(at, got, prev, last) {
      for (let i = 0; i < got.length; i++) {
        const p = at + i;
        if (p < known) continue;
        if (p === 0) {
          newest = got[0].id;
          markPos.push(0);
          markBefore.push(newest + 1);
        } else if (p % PAGE === 0) {
          markPos.push(p);
          markBefore.push(i ? got[i - 1].id : prev);
        }
      }
      if (at + got.length > known) known = at + got.length;
      if (last) {
        done = true;
        known = at + got.length;
      }
    }

    // down pages in the rows below the window, and drops rows above it past MAX_ROWS.
    function down() {
      const at = top + rows.length;
      const set = { limit: PAGE };
      const prev = rows.length ? rows[rows.length - 1].id : null;
      if (prev !== null) set.before = prev;
      fetchRows(set, function (got, last) {
        learn(at, got, prev, last);
        for (let i = 0; i < got.length; i++) rows.push(got[i]);
        if (rows.length > MAX_ROWS) {
          const over = rows.length - MAX_ROWS;
          rows.splice(0, over);
          top += over;
        }
      });
    }

    // up pages in the rows just above the window (`after` its first id, at most as many as are
    // above it: exactly those, whatever arrived since), and drops rows below it past MAX_ROWS.
    function up() {
      const n = Math.min(PAGE, top);
      fetchRows({ after: rows[0].id, limit: n }, function (got) {
        if (got.length !== n) { // rows above were deleted: start again from the newest
          reset();
          viewport.scrollTop = 0;
          return;
        }
        rows = got.reverse().concat(rows);
        top -= n;
        if (rows.length > MAX_ROWS) rows.length = MAX_ROWS;
      });
    }

    // jump starts the window again at the last mark at or above position `first`.
    function jump(first) {
      let lo = 0;
      let hi = markPos.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (markPos[mid] <= first) lo = mid; else hi = mid - 1;
      }
      if (!markPos.length) { reset(); render(); return; }
      const at = markPos[lo];
      const before = markBefore[lo];
      fetchRows({ before: before, limit: 2 * PAGE }, function (got, last) {
        if (!got.length) { // nothing there any more (retention): start again from the newest
          reset();
          return;
        }
        rows = got;
        top = at;
        learn(at, got, before, last);
      });
    }

    async function poll() {
      if (paused || polling || loading) return;
      if (stalled) { // try the failed page again
        stalled = false;
        render();
        return;
      }
      if (newest === null) { // an empty list: look again
        if (done) { done = false; render(); }
        return;
      }
      polling = true;
      try {
        // One request a poll, never a loop: a busy trail cannot keep the page fetching.
        const p = new URLSearchParams(params);
        p.set('after', String(newest));
        p.set('limit', String(POLL_ROWS));
        const j = await getJSON('/api/activity?' + p.toString());
        const atTop = top === 0 && rows.length > 0 && viewport.scrollTop < rowHeight();
        if (!atTop) {
          waiting = j.rows.length;
        } else if (j.rows.length >= POLL_ROWS || waiting >= POLL_ROWS) {
          // More arrived than one poll takes: start again from the newest rows.
          waiting = 0;
          reset();
        } else {
          waiting = 0;
          const fresh = j.rows.filter(function (r) { return r.id > newest; }).reverse();
          const n = fresh.length;
          if (n) {
            rows = fresh.concat(rows);
            if (rows.length > MAX_ROWS) rows.length = MAX_ROWS;
            known += n;
            for (let k = 0; k < markPos.length; k++) markPos[k] += n;
            newest = fresh[0].id;
            markPos.unshift(0);
            markBefore.unshift(newest + 1);
            // Marks at most PAGE apart, not one a poll: one between two others that close is dropped.
            while (markPos.length > 2 && markPos[2] <= PAGE) {
              markPos.splice(1, 1);
              markBefore.splice(1, 1);
            }
          }
        }
        error = '';
      } catch (e) {
        error = e.message;
      } finally {
        polling = false;
      }
      render();
    }

    function field(dl, name, value) {
      if (value === null || value === undefined || value === '') return;
      dl.appendChild(el('dt', null, name));
      dl.appendChild(el('dd', null, show(value)));
    }

    function pre(title, value) {
      if (value === null || value === undefined) return;
      detailBody.appendChild(el('h3', null, title));
      detailBody.appendChild(el('pre', null, typeof value === 'string' ? value : JSON.stringify(value, null, 2)));
    }

    function diffTable(oldRow, newRow, changed) {
      const t = el('table', 'diff');
      const head = el('tr');
      ['column', 'old', 'new'].forEach(function (c) { head.appendChild(el('th', null, c)); });
      t.appendChild(head);
      const names = [];
      [oldRow, newRow].forEach(function (img) {
        if (img && typeof img === 'object') Object.keys(img).forEach(function (k) { if (names.indexOf(k) < 0) names.push(k); });
      });
      names.forEach(function (k) {
        const o = oldRow ? oldRow[k] : undefined;
        const n = newRow ? newRow[k] : undefined;
        const isChanged = (changed || []).indexOf(k) >= 0 || (oldRow && newRow && JSON.stringify(o) !== JSON.stringify(n));
        const tr = el('tr', isChanged ? 'changed' : null);
        tr.appendChild(el('td', null, k));
        tr.appendChild(el('td', null, show(o)));
        tr.appendChild(el('td', null, show(n)));
        t.appendChild(tr);
      });
      return t;
    }

    async function openDetail(id) {
      selected = id;
      detail.hidden = false;
      detailBody.replaceChildren(el('p', null, 'loading #' + id));
      render();
      try {
        const r = await getJSON('/api/activity/' + encodeURIComponent(id) + '?db=' + encodeURIComponent(db));
        detailBody.replaceChildren(el('h2', null, 'Record #' + r.id));
        const dl = el('dl');
        ['ts', 'committed_at', 'kind', 'category', 'severity', 'status', 'sqlstate', 'db_user', 'effective_user',
          'actor', 'application_name', 'client_addr', 'backend_pid', 'xid', 'command', 'schema_name', 'table_name',
          'relations', 'row_key', 'rows', 'duration_ms', 'query_id'].forEach(function (k) { field(dl, k, r[k]); });
        detailBody.appendChild(dl);
        if (r.old_row || r.new_row) {
          detailBody.appendChild(el('h3', null, 'Row images' + (r.changed_columns ? ' (changed: ' + r.changed_columns.join(', ') + ')' : '')));
          detailBody.appendChild(diffTable(r.old_row, r.new_row, r.changed_columns));
        }
        pre('Query', r.query);
        pre('Context', r.context);
        pre('JWT claims', r.jwt_claims);
        pre('Details', r.details);
      } catch (e) {
        detailBody.replaceChildren(el('p', 'error', e.message));
      }
    }

    document.getElementById('close').addEventListener('click', function () {
      detail.hidden = true;
      selected = null;
      render();
    });
    pauseBtn.addEventListener('click', function () {
      paused = !paused;
      pauseBtn.textContent = paused ? 'Resume' : 'Pause';
      setStatus();
    });
    compactBox.addEventListener('change', function () {
      const top = Math.floor(viewport.scrollTop / rowHeight());
      compact = compactBox.checked;
      body.classList.toggle('compact', compact);
      const u = new URL(location.href);
      if (compact) u.searchParams.set('compact', '1'); else u.searchParams.delete('compact');
      history.replaceState(null, '', u.toString());
      render();
      viewport.scrollTop = top * rowHeight();
    });
    viewport.addEventListener('scroll', render, { passive: true });
    window.addEventListener('resize', render);
    setInterval(poll, refreshMs);
    render();
  }

  // ---- Health: the score and the records in/out per second, live ----
  function health() {
    const points = []; // {t, inRate, outRate}
    let last = null;
    const lineIn = document.getElementById('rate-in');
    const lineOut = document.getElementById('rate-out');
    const maxText = document.getElementById('rate-max');
    const now = document.getElementById('rate-now');
    const score = document.getElementById('score');
    const hstatus = document.getElementById('health-status');

    function draw() {
      const max = Math.max(1, ...points.map(function (p) { return Math.max(p.inRate, p.outRate); }));
      function pts(key) {
        return points.map(function (p, i) {
          const x = 760 - (points.length - 1 - i) * (760 / 60);
          const y = 195 - 175 * p[key] / max;
          return x.toFixed(1) + ',' + y.toFixed(1);
        }).join(' ');
      }
      lineIn.setAttribute('points', pts('inRate'));
      lineOut.setAttribute('points', pts('outRate'));
      maxText.textContent = max.toFixed(1) + ' records/s';
    }

    async function tick() {
      try {
        const h = await getJSON('/api/health?db=' + encodeURIComponent(db));
        const m = h.metrics || {};
        const t = Date.now() / 1000;
        if (last && t > last.t) {
          const dt = t - last.t;
          points.push({
            inRate: Math.max(0, (m.records_in - last.records_in) / dt),
            outRate: Math.max(0, (m.records_out - last.records_out) / dt),
          });
          if (points.length > 61) points.shift();
          const p = points[points.length - 1];
          now.textContent = 'in ' + p.inRate.toFixed(1) + '/s · out ' + p.outRate.toFixed(1) + '/s · queued ' + show(m.queued_records);
          draw();
        }
        last = { t: t, records_in: m.records_in, records_out: m.records_out };
        if (h.health) {
          score.textContent = show(h.health.score);
          hstatus.textContent = show(h.health.status);
        }
      } catch (e) {
        now.textContent = e.message;
      }
    }
    tick();
    setInterval(tick, refreshMs);
  }
})();
