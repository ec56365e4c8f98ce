/* "Copy as curl": copies the text of the <pre> named by the button's data-copy attribute.
   Without JavaScript the button stays hidden and the command is still there to select. */
(function () {
  "use strict";

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function copy(text, element) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    // Plain http outside localhost has no clipboard API: select the text and ask for a copy.
    selectText(element);
    return document.execCommand("copy") ? Promise.resolve() : Promise.reject(new Error("refused"));
  }

  var buttons = document.querySelectorAll("button[data-copy]");
  Array.prototype.forEach.call(buttons, function (button) {
    var source = document.getElementById(button.getAttribute("data-copy"));
    var status = button.nextElementSibling;
    if (!source) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      copy(source.textContent, source).then(
        function () {
          status.textContent = "Copied.";
        },
        function () {
          selectText(source);
          status.textContent = "Could not copy: the command is selected, copy it by hand.";
        }
      );
    });
  });
})();
