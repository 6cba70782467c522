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
    const rows = []; // newest first
    const pool = []; // the row elements on screen, reused
    const cols = ['id', 'ts', 'kind', 'status', 'db_user', 'actor', 'command', 'table', 'query'];
    let compact = params.get('compact') === '1';
    let paused = false;
    let done = false; // the oldest row is loaded
    let loading = false;
    let polling = false;
    let error = '';
    let selected = null;
    // The live poll keeps at most MAX_ROWS rows while the reader watches the top (the oldest
    // are dropped, and paged in again if the reader scrolls down to them); while the reader is
    // further down, new rows are only counted ("N new rows"), not kept.
    const MAX_ROWS = 5000;
    const POLL_ROWS = 1000;
    let waiting = 0; // new rows counted while the reader was not at the top

    compactBox.checked = compact;
    body.classList.toggle('compact', compact);

    function rowHeight() { return compact ? 20 : 30; }

    function setStatus() {
      const news = waiting ? ' · ' + (waiting >= POLL_ROWS ? POLL_ROWS + '+' : waiting) +
        (waiting === 1 ? ' new row' : ' new rows') + ' (scroll to the top)' : '';
      status.textContent = rows.length + ' rows' + (done ? ' (all)' : '') +
        (paused ? ' · paused' : ' · live every ' + refreshMs + ' ms') + news + (error ? ' · ' + error : '');
    }

    function cellValues(r) {
      const table = r.table_name ? (r.schema_name ? r.schema_name + '.' : '') + r.table_name : '';
      return [r.id, r.ts, r.kind, r.status, r.db_user, r.actor, r.command, table, r.query];
    }

    function render() {
      const h = rowHeight();
      spacer.style.height = (rows.length * h) + 'px';
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
        if (k >= count || i >= rows.length) {
          div.hidden = true;
          delete div.dataset.id;
          continue;
        }
        const r = rows[i];
        div.hidden = false;
        div.style.top = (i * h) + 'px';
        div.style.height = h + 'px';
        div.dataset.id = String(r.id);
        div.className = 'row status-' + (r.status === 'error' || r.status === 'gap' ? r.status : 'ok') +
          (String(r.id) === selected ? ' selected' : '');
        const v = cellValues(r);
        for (let c = 0; c < v.length; c++) div.children[c].textContent = show(v[c]);
      }
      if (!done && !loading && first + count > rows.length - 100) loadOlder();
      setStatus();
    }

    async function loadOlder() {
      loading = true;
      try {
        const p = new URLSearchParams(params);
        p.set('limit', '500');
        if (rows.length) p.set('before', String(rows[rows.length - 1].id));
        const j = await getJSON('/api/activity?' + p.toString());
        for (const r of j.rows) rows.push(r);
        if (j.next_before === null) done = true;
        error = '';
      } catch (e) {
        error = e.message;
        done = true; // stop retrying a bad filter in a loop; the poll goes on
      } finally {
        loading = false;
      }
      render();
    }

    async function poll() {
      if (paused || polling || loading) return;
      if (!rows.length) {
        if (done) { done = false; loadOlder(); }
        return;
      }
      polling = true;
      try {
        // One request a poll, never a loop: a busy trail cannot keep the page fetching.
        const p = new URLSearchParams(params);
        p.set('after', String(rows[0].id));
        p.set('limit', String(POLL_ROWS));
        const j = await getJSON('/api/activity?' + p.toString());
        const atTop = viewport.scrollTop < rowHeight();
        if (!atTop) {
          waiting = j.rows.length;
        } else if (j.rows.length >= POLL_ROWS || waiting >= POLL_ROWS) {
          // More arrived than one poll takes: start again from the newest rows.
          waiting = 0;
          rows.length = 0;
          done = false;
          if (!loading) loadOlder();
        } else {
          waiting = 0;
          const fresh = j.rows.filter(function (r) { return r.id > rows[0].id; }).reverse();
          rows.unshift.apply(rows, fresh);
          if (rows.length > MAX_ROWS) {
            rows.length = MAX_ROWS;
            done = false;
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
    loadOlder();
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
