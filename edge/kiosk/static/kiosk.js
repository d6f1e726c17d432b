/* StoreLens kiosk screen. Live decisions arrive as server-sent events from the runtime
   (/events); search, recommend and confirm are JSON POSTs to /api/<verb>. No framework, no
   network beyond this device. window.__kiosk exposes the renders (times, item, pick list) and the
   confirmations for tests and benchmarks. */
(() => {
  'use strict';
  const cfg = JSON.parse(document.getElementById('kiosk-config').textContent);
  const L = cfg.labels;
  // The kiosk token came once in the address (/?token=...); the server answered with an HttpOnly
  // cookie that every later request carries. Drop it from the address (and so from history).
  if (new URLSearchParams(location.search).has('token')) history.replaceState(null, '', location.pathname);
  const money = new Intl.NumberFormat(cfg.locale, { style: 'currency', currency: cfg.currency });
  const BROWSE_MS = 60000; // a product opened from search or a recommendation shows this long
  const $ = (id) => document.getElementById(id);
  const stage = $('stage');
  const kiosk = window.__kiosk = { rendered: [], connects: 0, last: null, confirms: [] };
  let live = null;      // the runtime's current decision event
  let shown = null;     // what the screen shows: {kind, product, matchId, item, pick, browse}
  let online = false;
  let broker = 'off';
  let browseTimer = 0;
  let toastTimer = 0;

  // -- helpers ---------------------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function price(p) { return p == null ? null : money.format(p); }
  function placeholder(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
    const ph = el('div', 'ph', name.split(/\s+/).slice(0, 2).map((w) => w[0] || '').join('').toUpperCase());
    ph.style.background = `linear-gradient(135deg, hsl(${h} 55% 48%), hsl(${(h + 40) % 360} 60% 38%))`;
    return ph;
  }
  function picture(product, eager) {
    if (!product.image) return placeholder(product.name);
    const img = el('img');
    img.alt = product.name;
    img.decoding = 'async';
    if (!eager) img.loading = 'lazy';
    img.src = product.image;
    img.onerror = () => img.replaceWith(placeholder(product.name));
    return img;
  }
  function card(product, onTap) {
    const b = el('button', 'card');
    b.type = 'button';
    b.dataset.sku = product.sku;
    const thumb = el('div', 'thumb');
    thumb.append(picture(product, false));
    const body = el('div', 'c-body');
    body.append(el('div', 'c-name', product.name));
    body.append(el('div', 'c-price', price(product.price) || L.no_price));
    if (product.location) body.append(el('div', 'c-loc', product.location));
    b.append(thumb, body);
    b.addEventListener('click', () => onTap(product));
    return b;
  }
  function fill(container, products, onTap) {
    container.replaceChildren(...products.map((p) => card(p, onTap)));
  }
  function toast(text, bad) {
    const t = $('toast');
    t.textContent = text;
    t.classList.toggle('bad', !!bad);
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 3500);
  }
  function setStatus() {
    const s = $('status');
    const state = !online ? 'connecting' : broker === 'offline' ? 'store-offline' : 'live';
    s.dataset.state = state;
    $('status-text').textContent = state === 'connecting' ? L.reconnecting
      : state === 'store-offline' ? L.store_offline : L.live;
  }
  async function api(verb, body) {
    const r = await fetch(`/api/${verb}`, {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
    });
    const reply = await r.json();
    if (!reply.ok) throw new Error(reply.error || `HTTP ${r.status}`);
    return reply.result;
  }

  // -- views -----------------------------------------------------------------------------------
  const PICKS_SHOWN = 4; // alternatives under a known answer (the unknown view shows every candidate)
  function showEmpty() {
    stage.dataset.kind = 'empty';
  }
  // A product big on the screen: from a decision (with its pick list), a confirmation, or browsing.
  function showProduct(product, opts) {
    stage.dataset.kind = 'known';
    $('p-name').textContent = product.name;
    const pr = $('p-price');
    pr.textContent = price(product.price) || L.no_price;
    pr.classList.toggle('none', product.price == null);
    $('p-loc-row').hidden = !product.location;
    $('p-loc').textContent = product.location || '';
    $('p-confirmed').hidden = !opts.confirmed;
    const picks = opts.confirmed ? [] : (opts.picks || []).slice(0, PICKS_SHOWN);
    fill($('p-picks'), picks, (p) => confirm(p, 'candidate'));
    $('picks').hidden = !opts.matchId || opts.confirmed || !picks.length;
    stage.classList.toggle('has-picks', !$('picks').hidden);
    const cur = $('p-photo').firstElementChild; // the same product's photo stays (an update does not flicker)
    if (!cur || cur.dataset.sku !== product.sku) {
      const pic = picture(product, true);
      pic.dataset.sku = product.sku;
      $('p-photo').replaceChildren(pic);
    }
    if (!opts.keepRecs) {
      $('recs-together').hidden = true;
      $('recs-similar').hidden = true;
    }
  }
  function showPick(title, candidates, onTap) {
    stage.dataset.kind = 'unknown';
    $('u-title').textContent = title;
    fill($('u-cards'), candidates, onTap);
  }
  function showRecs(recs) {
    if (!shown || !shown.product || recs.sku !== shown.product.sku) return;
    const together = $('recs-together');
    const popular = recs.together.length && recs.together.every((r) => r.source === 'popular');
    together.querySelector('h2').textContent = popular ? L.popular : L.together;
    fill(together.querySelector('.cards'), recs.together, browse);
    together.hidden = !recs.together.length;
    // under a pick list there is room for one row: "bought together", else "similar" (the pick list is
    // already the products that look like this one)
    const similar = $('recs-similar');
    fill(similar.querySelector('.cards'), recs.similar, browse);
    similar.hidden = !recs.similar.length || (stage.classList.contains('has-picks') && !together.hidden);
  }

  // -- what the runtime says -------------------------------------------------------------------
  // One answer on the screen per item: an event of the item already shown (a heartbeat, a firmer
  // or corrected answer, a confirmation) replaces it in place; only a new item takes the screen.
  function itemOf(ev) { return ev.item || ev.view_id || null; }
  function render(ev) {
    live = ev;
    const item = itemOf(ev);
    const sameItem = !!(shown && shown.item && shown.item === item);
    if (ev.heartbeat && sameItem && shown.kind === ev.kind) {
      shown.matchId = ev.match_id; // nothing new to show: keep what the shopper is doing
      return;
    }
    if (shown && shown.browse && !sameItem && ev.heartbeat) return;
    clearTimeout(browseTimer);
    // search owns the screen until the shopper closes it or a new item arrives (an empty tray is not
    // one: the shopper may have lifted the item to type)
    if (!sameItem && ev.kind !== 'empty') closeResults();
    const keepRecs = shown && shown.product && ev.product && shown.product.sku === ev.product.sku;
    const pick = sameItem && shown.pick;
    shown = { kind: ev.kind, product: ev.product, matchId: ev.match_id, item, pick };
    if (ev.kind === 'known' && ev.product) {
      showProduct(ev.product, { confirmed: ev.confirmed, matchId: ev.match_id, picks: ev.candidates, keepRecs });
    } else if (ev.kind === 'unknown') {
      showPick(L.unknown_title, ev.candidates, (p) => confirm(p, 'candidate'));
    } else {
      showEmpty();
    }
    requestAnimationFrame(() => {
      const rec = { match_id: ev.match_id, kind: ev.kind, sku: ev.product ? ev.product.sku : null,
        item, update: sameItem, picks: ev.kind === 'known' && !$('picks').hidden
          ? [...$('p-picks').children].map((c) => c.dataset.sku) : [],
        emitted_ms: ev.emitted_ms, shown_ms: performance.timeOrigin + performance.now() };
      kiosk.rendered.push(rec);
      kiosk.last = rec;
    });
  }
  function canConfirm() {
    return !!(shown && shown.matchId && (shown.kind === 'unknown' || shown.pick));
  }
  async function confirm(product, source, matchId) {
    const target = matchId || (shown && shown.matchId);
    try {
      const result = await api('confirm', { match_id: target, sku: product.sku, source });
      kiosk.confirms.push(result);
      closeResults();
      if (!result.shown) toast(L.confirmed); // else the screen shows it, with its "confirmed" badge
    } catch (e) {
      toast(L.confirm_failed, true);
    }
  }
  function browse(product) {
    closeResults();
    clearTimeout(browseTimer);
    shown = { kind: 'known', product, matchId: null, item: live ? itemOf(live) : null, browse: true };
    showProduct(product, { confirmed: false, matchId: null });
    loadRecs(product.sku);
    browseTimer = setTimeout(() => { if (live) { shown = null; render(live); } }, BROWSE_MS);
  }
  async function loadRecs(sku) {
    try { showRecs(await api('recommend', { sku })); } catch (e) { /* recommendations are optional */ }
  }

  // -- search ----------------------------------------------------------------------------------
  // Results opened while an item is unknown (or after "Not listed? Search") confirm that item when
  // tapped, even if the tray emptied meanwhile; otherwise a tap opens the product.
  let searchSeq = 0;
  let searchFor = null; // {matchId, item} the open results would confirm
  async function search(q) {
    const seq = ++searchSeq;
    const text = q.trim();
    if (!text) { closeResults(); return; }
    let result;
    try { result = await api('search', { q: text }); } catch (e) { return; }
    if (seq !== searchSeq) return;
    if ($('results').hidden) searchFor = canConfirm() ? { matchId: shown.matchId, item: shown.item } : null;
    fill($('r-cards'), result.results, (p) => {
      if (!searchFor) { browse(p); return; }
      const sameItem = shown && shown.item === searchFor.item && shown.matchId;
      confirm(p, 'search', sameItem ? shown.matchId : searchFor.matchId);
    });
    $('r-empty').hidden = result.results.length > 0;
    $('results').hidden = false;
  }
  function closeResults() {
    $('results').hidden = true;
    searchFor = null;
  }
  let typing = 0;
  $('q').addEventListener('input', (e) => {
    clearTimeout(typing);
    const q = e.target.value;
    typing = setTimeout(() => { if (q.trim().length >= 2) search(q); }, 300);
  });
  $('search').addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(typing);
    search($('q').value);
  });
  $('r-close').addEventListener('click', closeResults);
  $('pick-search').addEventListener('click', () => {
    if (!shown || !shown.matchId) return;
    shown.pick = true; // what the shopper searches for now corrects this item
    $('q').focus();
  });

  // -- the live stream: EventSource reconnects by itself; a refused stream is reopened here -------
  function handle(msg) {
    if (msg.type === 'hello') {
      kiosk.connects += 1;
      broker = msg.broker;
      if (msg.state) {
        shown = null;
        render(msg.state);
        if (msg.state.product) loadRecs(msg.state.product.sku);
      } else if (!shown) {
        showEmpty();
      }
    } else if (msg.type === 'decision') {
      render(msg);
    } else if (msg.type === 'recs') {
      showRecs(msg);
    } else if (msg.type === 'link') {
      broker = msg.broker;
    }
    setStatus();
  }
  function connect() {
    const es = new EventSource('/events');
    es.onopen = () => { online = true; setStatus(); };
    es.onmessage = (e) => handle(JSON.parse(e.data));
    es.onerror = () => {
      online = false;
      setStatus();
      if (es.readyState === EventSource.CLOSED) { es.close(); setTimeout(connect, 2000); }
    };
  }

  document.querySelectorAll('[data-label]').forEach((e) => { e.textContent = L[e.dataset.label] || ''; });
  $('q').placeholder = L.search_placeholder;
  setStatus();
  connect();
})();
