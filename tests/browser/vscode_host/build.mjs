// Build the test page into dist/: host.js (this page's code, @jupyterlab/services and VS Code's
// widget bundle), host.css, and require.js loaded beside it, as VS Code's webview loads it.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';

mkdirSync('dist', { recursive: true });
await build({
  entryPoints: ['src/host.js'],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  outfile: 'dist/host.js',
  loader: { '.woff': 'file', '.woff2': 'file', '.ttf': 'file', '.eot': 'file', '.svg': 'file' },
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning'
});
copyFileSync('node_modules/requirejs/require.js', 'dist/require.js');
copyFileSync('src/host.html', 'dist/host.html');
