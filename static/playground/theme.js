/* playground: apply the saved theme before the page is first painted, so a dark choice never
 * flashes light. A separate blocking file because the Content-Security-Policy allows no inline
 * script; app.js owns the toggle and the rest. */
try {
  const theme = localStorage.getItem("playground-theme");
  if (theme === "dark" || theme === "light") document.documentElement.dataset.theme = theme;
} catch (err) {
  /* storage unavailable (privacy mode): follow the system setting */
}
