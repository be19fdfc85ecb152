// The notice-board sheet's one button: open the phone's print dialog.
document.getElementById("print")?.addEventListener("click", () => window.print());
