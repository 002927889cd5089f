/**
 * The /demo page: a collaborative grid (records × fields) built on the
 * client SDK, whose script is served beside it. Self-contained: no CDN.
 */
export const demoPage = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>teable-realtime · demo grid</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f5f6f8; }
  body { margin: 0; padding: 24px; }
  header { display: flex; align-items: center; gap: 12px; margin-bottom: 16px; }
  h1 { font-size: 20px; margin: 0; }
  #me { color: #fff; border-radius: 10px; padding: 2px 10px; font-size: 13px; }
  #others { color: #667; font-size: 13px; }
  #banner { position: fixed; top: 12px; left: 50%; transform: translateX(-50%); padding: 8px 16px;
    border-radius: 6px; font-size: 14px; opacity: 0; transition: opacity .2s; pointer-events: none; }
  #banner.show { opacity: 1; }
  #banner.warn { background: #fff3bf; color: #5c4400; }
  #banner.ok { background: #d3f9d8; color: #1b5e20; }
  #banner.error { background: #ffe3e3; color: #8a1c1c; }
  table { border-collapse: collapse; background: #fff; box-shadow: 0 1px 2px #0002; }
  th, td { border: 1px solid #e3e5ea; padding: 0; }
  th { background: #f0f1f4; font-weight: 600; font-size: 13px; padding: 6px 10px; text-align: left; }
  td { position: relative; min-width: 180px; }
  td input { border: 0; width: 100%; box-sizing: border-box; padding: 8px 10px; font: inherit; background: transparent; }
  td input:focus { outline: 2px solid #4263eb; outline-offset: -2px; }
  td.present { box-shadow: inset 0 0 0 2px var(--who); }
  td .who { position: absolute; top: -9px; right: 4px; font-size: 10px; color: #fff; background: var(--who);
    border-radius: 3px; padding: 0 4px; display: none; }
  td.present .who { display: block; }
  p { color: #667; font-size: 13px; max-width: 640px; }
</style>
</head>
<body>
<div id="banner" role="status" aria-live="polite"></div>
<header><h1>Demo grid</h1><span id="me"></span><span id="others"></span></header>
<table id="grid"></table>
<p>Open this page in another window (add <code>?user=someone</code>): edits show up live, and so
does the cell each user has selected. Stop and start the server, or go offline: edits made meanwhile
are kept and sent on reconnect. Built on <code>teable-realtime/client</code> (docs/CLIENT.md).</p>
<script type="module" src="/demo/grid.js"></script>
</body>
</html>
`
