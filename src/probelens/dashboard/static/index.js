// Entry point of the probelens tab. TensorBoard loads this module in the tab's iframe and calls render();
// the page's base URL is /data/plugin/probelens/, so every relative URL below is one of the plugin's routes.

export async function render() {
  const style = document.createElement('link');
  style.rel = 'stylesheet';
  style.href = './static/style.css';
  document.head.appendChild(style);
  const root = document.createElement('div');
  root.id = 'probelens';
  document.body.appendChild(root);
  const {Dashboard} = await import('./static/dashboard.js');
  const dashboard = new Dashboard(root);
  window.probelensDashboard = dashboard; // for the browser tests and the screenshot script
  await dashboard.start();
}
